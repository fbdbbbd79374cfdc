"""Encoder architectures, heads, task wrappers and the preset registry."""

from jaxbert.models.bert.model import BertConfig, BertModel, EncoderOutput
from jaxbert.models.task_models import (EncoderForMaskedLM, EncoderForQuestionAnswering, EncoderForSequenceClassification,
                                  EncoderForTokenClassification, build_task_model)
