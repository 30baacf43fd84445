"""Brute-force least-squares references shared by the refit-aware cost and greedy-path tests (NumPy, float64)."""

import numpy as np


def least_squares_error(features, targets):
    """The residual sum of squares of the least-squares fit of `targets` on `features`."""
    residual = targets - features @ np.linalg.lstsq(features, targets, rcond=None)[0]
    return float(np.sum(residual**2))


def brute_costs(columns, pre, members, sizes, targets, lam, centre):
    """Increase of the least-squares error of `targets` on the augmented `columns` when slot j is removed or
    slots i, j are merged (the merged column rebuilt from the members' mean pre-activation)."""
    f = np.column_stack(columns)
    base = least_squares_error(f, targets)
    k = len(columns)
    merge, removal = np.full((k, k), np.inf), np.zeros(k)
    for i in range(k):
        removal[i] = least_squares_error(np.delete(f, i, axis=1), targets) - base
        for j in range(k):
            if i != j:
                alpha = sizes[i] / (sizes[i] + sizes[j])
                mu = np.tanh(alpha * pre[i] + (1 - alpha) * pre[j])
                mu = mu - mu.mean() if centre else mu
                column = np.concatenate([mu, np.sqrt(lam) * (alpha * members[i] + (1 - alpha) * members[j])])
                merge[i, j] = (
                    least_squares_error(np.column_stack([np.delete(f, [i, j], axis=1), column]), targets) - base
                )
    return merge, removal


def zipLM_order(features, w, lam, count):
    """ZipLM's greedy elimination as coded (reference §2.1): score ‖W_:,j‖²/Hinv_jj, OBS update, downdate."""
    hinv = np.linalg.inv(features.T @ features + lam * np.eye(features.shape[1]))
    w = w.copy()
    removed = []
    for _ in range(count):
        with np.errstate(divide="ignore", invalid="ignore"):  # removed neurons: 0/0, masked next
            score = np.sum(w**2, axis=0) / np.diag(hinv)
        score[removed] = np.inf
        j = int(np.argmin(score))
        w = w - np.outer(w[:, j] / hinv[j, j], hinv[j])
        hinv = hinv - np.outer(hinv[:, j], hinv[j]) / hinv[j, j]
        removed.append(j)
    return removed
