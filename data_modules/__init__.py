"""Data modules, one per data family.  A new modality = one DomainDataModule subclass."""
from data_modules.base import DomainDataModule
from data_modules.medmnist import MedMNISTDataModule
from data_modules.pairs import CsvPairsDataModule, PromptPairsDataModule
from data_modules.pet_ct import SemiSyntheticPETCTDataModule
from data_modules.segmentation import SegmentationDataModule
from data_modules.shifted import ShiftedCopyDataModule
from data_modules.stream import DomainStream
from data_modules.streaming import StreamingDataModule
from data_modules.survival import SemiSyntheticSurvivalDataModule, SurvivalDataModule
from data_modules.volumes import VolumeDataModule

__all__ = [
    "DomainDataModule", "MedMNISTDataModule", "SegmentationDataModule", "SurvivalDataModule",
    "SemiSyntheticSurvivalDataModule", "SemiSyntheticPETCTDataModule", "ShiftedCopyDataModule", "DomainStream",
    "PromptPairsDataModule", "CsvPairsDataModule", "VolumeDataModule", "StreamingDataModule",
]
