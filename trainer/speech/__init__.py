"""Free-running speech quality: what the model says when nobody feeds it the answer.

Teacher-forced losses and alignments tell how well the model predicts the next frame
of a recording it is shown. Inference feeds the model its own output, and that is
what a user hears. This package judges inference:

* :mod:`trainer.speech.mcd`       MCD-DTW: mel-cepstral distortion to a reference recording
* :mod:`trainer.speech.attention` health of the inference alignment (coverage, progress, end)
* :mod:`trainer.speech.verdict`   per-utterance verdicts and the run-level speech score
* :mod:`trainer.speech.freerun`   the evaluation pass that synthesizes and judges a set of utterances
"""
