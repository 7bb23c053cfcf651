"""Score networks: time embeddings, an MLP for low-dimensional data and a small U-Net for images.

Every network has the signature ``net(x, t_net) -> tensor`` with ``x`` of shape ``(B, *dims)``,
``t_net`` of shape ``(B,)`` (the network-time input chosen by
:meth:`scoresde.score.ScoreModel.net_time`), and an output shaped like ``x``.
"""
from .embedding import EMBEDDINGS, GaussianFourierEmbedding, SinusoidalEmbedding, make_embedding
from .mlp import MLPScoreNet
from .unet import UNet

__all__ = ["SinusoidalEmbedding", "GaussianFourierEmbedding", "make_embedding", "EMBEDDINGS", "MLPScoreNet", "UNet"]
