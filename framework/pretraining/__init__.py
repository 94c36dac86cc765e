"""Contrastive image–text pretraining (``medcl pretrain``) and the weights files it writes."""
from framework.pretraining.contrastive import ContrastivePretraining

__all__ = ["ContrastivePretraining"]
