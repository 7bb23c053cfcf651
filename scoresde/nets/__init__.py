"""Score networks: time embeddings, an MLP for low-dimensional data and a small U-Net for images.

Every network has the signature ``net(x, t_net, y=None) -> tensor`` with ``x`` of shape ``(B, *dims)``,
``t_net`` of shape ``(B,)`` (the network-time input chosen by
:meth:`scoresde.score.ScoreModel.net_time`), and an output shaped like ``x``. ``y`` is the class
input of a conditional network (``num_classes = K > 0``; :class:`ClassEmbedding`): ``None`` or a
``(B,)`` integer tensor, ``-1`` (``NULL_CLASS``) meaning no label; ``num_classes = 0`` networks
refuse it.
"""
from .embedding import EMBEDDINGS, ClassEmbedding, GaussianFourierEmbedding, SinusoidalEmbedding, make_embedding
from .mlp import MLPScoreNet
from .unet import UNet

__all__ = ["SinusoidalEmbedding", "GaussianFourierEmbedding", "make_embedding", "EMBEDDINGS", "ClassEmbedding",
           "MLPScoreNet", "UNet"]
