"""wsseg_nb: a runnable reproduction of Früh et al. 2021, weakly supervised PET/CT lesion segmentation."""

__version__ = "0.1.0"
