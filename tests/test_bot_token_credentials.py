"""The bot token as a systemd credential: ``$CREDENTIALS_DIRECTORY/telegram_bot_token``
(``LoadCredential=telegram_bot_token`` in deploy/smart-tuner.service)."""

from __future__ import annotations

from agent.bot_token import CREDENTIAL_NAME, CREDENTIALS_DIR_ENV, ENV_FILE_ENV, TOKEN_ENV, bot_settings, bot_token

from conftest import fake_bot_token

TOKEN = fake_bot_token(123456789, "AAHcredential-secret_part-of-the-token")
SECRET = TOKEN.split(":", 1)[1]


def test_token_is_read_from_the_systemd_credential_and_never_shown(tmp_path, monkeypatch, capsys, recwarn):
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / CREDENTIAL_NAME).write_text(TOKEN + "\n")  # systemd passes the file as it is
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.setenv(ENV_FILE_ENV, "")
    monkeypatch.setenv(CREDENTIALS_DIR_ENV, str(creds))

    assert bot_token() == TOKEN
    settings = bot_settings()
    for shown in (repr(settings), str(settings), repr(settings.telegram_bot_token), str(settings.telegram_bot_token),
                  settings.model_dump_json()):
        assert SECRET not in shown
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    assert not any(SECRET in str(w.message) for w in recwarn)

    # The credential wins over a .env in the working folder; the environment wins over both.
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"{TOKEN_ENV}=111:from-dotenv\n")
    monkeypatch.setenv(ENV_FILE_ENV, str(dotenv))
    assert bot_token() == TOKEN
    monkeypatch.setenv(TOKEN_ENV, "222:from-the-environment")
    assert bot_token() == "222:from-the-environment"
    monkeypatch.setenv(TOKEN_ENV, "")  # empty counts as unset
    assert bot_token() == TOKEN

    # No credential file, or no such folder: no token, no error.
    (creds / CREDENTIAL_NAME).unlink()
    monkeypatch.setenv(ENV_FILE_ENV, "")
    assert bot_token() is None
    monkeypatch.setenv(CREDENTIALS_DIR_ENV, str(tmp_path / "missing"))
    assert bot_token() is None
