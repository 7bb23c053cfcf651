"""A feature 'extractor' that passes the features through: torchmetrics' FID/KID take a feature
module with a ``num_features`` attribute, and the cross-checks feed them features directly."""
import torch


def identity_features(dim: int) -> torch.nn.Module:
    class Identity(torch.nn.Module):
        num_features = dim

        def forward(self, x):
            return x

    return Identity()
