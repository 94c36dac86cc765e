"""Catalogue of the official MedMNIST v3 files: label names, modality, prompts, download URL, MD5.

URLs and MD5 checksums are those of the official ``medmnist`` package (``INFO`` in
``medmnist/info.py``, Zenodo record 10519652).  Label names are the official ones, shortened where
the official name is a long parenthetical, so they read well inside a text prompt.
"""
from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["MEDMNIST_INFO", "ZENODO_RECORD", "official_url"]

ZENODO_RECORD = "https://zenodo.org/records/10519652/files"


def official_url(flag: str) -> str:
    return f"{ZENODO_RECORD}/{flag}.npz?download=1"


_ORGANS: Tuple[str, ...] = (
    "bladder", "left femur", "right femur", "heart", "left kidney", "right kidney",
    "liver", "left lung", "right lung", "pancreas", "spleen",
)

#: flag -> facts about the official 28-px file
MEDMNIST_INFO: Dict[str, dict] = {
    "pathmnist": dict(
        md5="a8b06965200029087d5bd730944a56c1", kind="classification", modality="histology", channels=3, spatial_dims=2,
        prompt="an H&E histology patch of {}",
        labels=("adipose tissue", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
                "cancer-associated stroma", "colorectal adenocarcinoma epithelium"),
    ),
    "chestmnist": dict(
        md5="02c8a6516a18b556561a56cbdd36c4a8", kind="multilabel", modality="x-ray", channels=1, spatial_dims=2,
        prompt="a chest x-ray showing {}",
        labels=("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia", "pneumothorax",
                "consolidation", "edema", "emphysema", "fibrosis", "pleural thickening", "hernia"),
    ),
    "dermamnist": dict(
        md5="0744692d530f8e62ec473284d019b0c7", kind="classification", modality="dermatoscopy", channels=3, spatial_dims=2,
        prompt="a dermatoscopic image of {}",
        labels=("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma", "benign keratosis-like lesions",
                "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"),
    ),
    "octmnist": dict(
        md5="c68d92d5b585d8d81f7112f81e2d0842", kind="classification", modality="oct", channels=1, spatial_dims=2,
        prompt="a retinal OCT scan showing {}",
        labels=("choroidal neovascularization", "diabetic macular edema", "drusen", "a normal retina"),
    ),
    "pneumoniamnist": dict(
        md5="28209eda62fecd6e6a2d98b1501bb15f", kind="classification", modality="x-ray", channels=1, spatial_dims=2,
        prompt="a paediatric chest x-ray with {}", labels=("normal lungs", "pneumonia"),
    ),
    "retinamnist": dict(
        md5="bd4c0672f1bba3e3a89f0e4e876791e4", kind="classification", modality="fundus", channels=3, spatial_dims=2,
        prompt="a fundus photograph with {} diabetic retinopathy",
        labels=("no", "mild", "moderate", "severe", "proliferative"),
    ),
    "breastmnist": dict(
        md5="750601b1f35ba3300ea97c75c52ff8f6", kind="classification", modality="ultrasound", channels=1, spatial_dims=2,
        prompt="a breast ultrasound image of a {} lesion", labels=("malignant", "normal or benign"),
    ),
    "bloodmnist": dict(
        md5="7053d0359d879ad8a5505303e11de1dc", kind="classification", modality="microscopy", channels=3, spatial_dims=2,
        prompt="a microscopy image of a {} blood cell",
        labels=("basophil", "eosinophil", "erythroblast", "immature granulocyte", "lymphocyte", "monocyte", "neutrophil",
                "platelet"),
    ),
    "tissuemnist": dict(
        md5="ebe78ee8b05294063de985d821c1c34b", kind="classification", modality="microscopy", channels=1, spatial_dims=2,
        prompt="a kidney cortex microscopy image of {}",
        labels=("collecting duct or connecting tubule", "distal convoluted tubule", "glomerular endothelial cells",
                "interstitial endothelial cells", "leukocytes", "podocytes", "proximal tubule segments",
                "thick ascending limb"),
    ),
    "organamnist": dict(
        md5="68e3f8846a6bd62f0c9bf841c0d9eacc", kind="classification", modality="ct", channels=1, spatial_dims=2,
        prompt="an axial abdominal CT slice of the {}", labels=_ORGANS,
    ),
    "organcmnist": dict(
        md5="b9ceb9546e10131b32923c5bbeaea2b1", kind="classification", modality="ct", channels=1, spatial_dims=2,
        prompt="a coronal abdominal CT slice of the {}", labels=_ORGANS,
    ),
    "organsmnist": dict(
        md5="9ab87b696fb54e2a387ebe992d6ed5f1", kind="classification", modality="ct", channels=1, spatial_dims=2,
        prompt="a sagittal abdominal CT slice of the {}", labels=_ORGANS,
    ),
    # 3D volumes (N, 28, 28, 28): spatial_dims 3, encoded slice by slice by the backbone.
    "organmnist3d": dict(md5="a0c5a1ff56af4f155c46d46fbb45a2fe", kind="classification", modality="ct", channels=1, spatial_dims=3,
                         prompt="a CT volume of the {}", labels=("liver", "right kidney", "left kidney", "right femur", "left femur",
                                                                  "bladder", "heart", "right lung", "left lung", "spleen", "pancreas")),
    "nodulemnist3d": dict(md5="8755a7e9e05a4d9ce80a24c3e7a256f3", kind="classification", modality="ct", channels=1, spatial_dims=3,
                          prompt="a CT volume of a {} lung nodule", labels=("benign", "malignant")),
    "adrenalmnist3d": dict(md5="bbd3c5a5576322bc4cdfea780653b1ce", kind="classification", modality="ct", channels=1, spatial_dims=3,
                           prompt="a 3D shape of a {} adrenal gland", labels=("normal", "hyperplastic")),
    "fracturemnist3d": dict(md5="6aa7b0143a6b42da40027a9dda61302f", kind="classification", modality="ct", channels=1, spatial_dims=3,
                            prompt="a CT volume of a {}", labels=("buckle rib fracture", "nondisplaced rib fracture", "displaced rib fracture")),
    "vesselmnist3d": dict(md5="b41fd4f7e7e2feedddb201585ecafa1b", kind="classification", modality="mra", channels=1, spatial_dims=3,
                          prompt="a 3D brain vessel segment with {}", labels=("no aneurysm", "an aneurysm")),
    "synapsemnist3d": dict(md5="1235b78a3cd6280881dd7850a78eadb6", kind="classification", modality="electron microscopy", channels=1,
                           spatial_dims=3, prompt="an electron microscopy volume of an {}", labels=("inhibitory synapse", "excitatory synapse")),
}
