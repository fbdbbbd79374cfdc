"""Encoder architectures, heads, task wrappers and the preset registry."""

from jaxbert.models.bert import BertConfig, BertModel, EncoderOutput
from jaxbert.models.tasks import (EncoderForMaskedLM, EncoderForQuestionAnswering, EncoderForSequenceClassification,
                                  EncoderForTokenClassification, build_task_model)
