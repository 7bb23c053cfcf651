"""Classical density baselines in bits/dim on the same dequantized split as the score models.

A score model's test bits/dim means little alone; these baselines, fitted to the *dequantized*
training data and evaluated on the test set with the same uniform dequantization and the same
offset (:func:`scoresde.bits_per_dim`), say how much better it is than simple models:

* ``gaussian``: a full-covariance Gaussian, maximum likelihood (sample mean and covariance of the
  dequantized training set, ``1e-6 I`` added to the covariance for numerical safety only);
* ``gmm``: a mixture of ``K`` full-covariance Gaussians fitted by EM (scikit-learn's
  ``GaussianMixture``, ``reg_covar`` 1e-6, ``n_init`` 2), the classical step up from one Gaussian.

Both are exact densities, so their bits/dim is exact (no estimator): the only randomness is the
dequantization noise, redrawn per repeat; the standard error is over per-image means, as in
:func:`scoresde.evaluate_bpd`.

    python studies/baselines.py                      # digits; seconds
    python studies/baselines.py --dataset mnist --data-root ~/data/mnist
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from _common import md_row, md_table, parser
from scoresde import atomic_write, load_dataset
from scoresde.likelihood import baseline_bpds, gaussian_logp, gmm_logp

__all__ = ["baseline_bpd", "gaussian_logp", "gmm_logp", "main"]


def _summary(bpd: torch.Tensor) -> dict:
    """``bpd`` (repeats, N) -> mean, standard error over per-sample means, N, repeats."""
    per_sample = bpd.mean(dim=0)
    n = per_sample.numel()
    return dict(mean=float(per_sample.mean()), stderr=float(per_sample.std(unbiased=True) / math.sqrt(n)),
                n_samples=n, repeats=int(bpd.shape[0]))


def baseline_bpd(ds, *, model: str = "gaussian", repeats: int = 3, seed: int = 0, k: int = 10) -> dict:
    """Test bits/dim of a baseline fitted to the dequantized training set, ``repeats`` fresh
    dequantizations of both sets (the fit is redone for each train draw)."""
    if not ds.quantized:
        raise ValueError(f"{ds.name} is continuous data; bits/dim needs a quantization grid")
    g = torch.Generator().manual_seed(seed)
    bpd = baseline_bpds(ds, ds.test, None if model == "gaussian" else k, repeats, g, seed)
    out = _summary(bpd)
    out.update(model=model if model == "gaussian" else f"gmm (K={k})", dataset=ds.name,
               n_train=int(ds.train.shape[0]), n_levels=ds.n_levels, data_range=list(ds.data_range),
               dequantize="uniform")
    return out


def main(argv=None) -> dict:
    p = parser(__doc__)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gmm-k", default="10", help="comma-separated component counts of the GMM rows (empty: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="one repeat, a 4-component GMM")
    p.add_argument("--out", type=Path, default=Path("docs/figures"))
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.quick:
        args.repeats, args.gmm_k = 1, "4"
    ds = load_dataset(args.dataset, root=args.data_root) if args.data_root else load_dataset(args.dataset)
    results = [baseline_bpd(ds, model="gaussian", repeats=args.repeats, seed=args.seed)]
    for k in [int(v) for v in args.gmm_k.split(",") if v.strip()]:
        results.append(baseline_bpd(ds, model="gmm", repeats=args.repeats, seed=args.seed, k=k))
    lines = [f"Baselines on {ds.name} (test set, N = {results[0]['n_samples']}, uniform dequantization, "
             f"{ds.n_levels} levels on {tuple(ds.data_range)}, {args.repeats} repeat(s)); command: "
             f"`python studies/baselines.py --dataset {args.dataset}{' --quick' if args.quick else ''}`", "",
             *md_table(["model", "test bits/dim", "standard error"])]
    lines += [md_row([r["model"], f"{r['mean']:.4f}", f"{r['stderr']:.4f}"]) for r in results]
    text = "\n".join(lines) + "\n"
    stem = f"baselines_{ds.name}" + ("_quick" if args.quick else "")
    atomic_write(args.out / f"{stem}.md", text)
    atomic_write(args.out / f"{stem}.json", json.dumps(results, indent=2))
    print(text)
    return {"results": results, "md": args.out / f"{stem}.md"}


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
