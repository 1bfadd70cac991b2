"""Accuracy tools: perplexity (HF strided, lm-eval disjoint) and logit agreement between models."""

from aisp.eval.corpus import Corpus, default_corpus
from aisp.eval.gate import PerplexityGate
from aisp.eval.perplexity import (DISJOINT, METHODS, STRIDED, LogitAgreement, PerplexityResult,
                                  logit_agreement, perplexity, text_perplexity)

__all__ = ["Corpus", "default_corpus", "DISJOINT", "METHODS", "STRIDED", "LogitAgreement",
           "PerplexityResult", "PerplexityGate", "logit_agreement", "perplexity", "text_perplexity"]
