"""Data modules, one per data family.  A new modality = one DomainDataModule subclass."""
from data_modules.base import DomainDataModule
from data_modules.medmnist import MedMNISTDataModule
from data_modules.stream import DomainStream

__all__ = ["DomainDataModule", "MedMNISTDataModule", "DomainStream"]
