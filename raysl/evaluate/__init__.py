"""Representation quality without fine-tuning: kNN, linear probe, the label-free
RankMe, alpha-ReQ, LiDAR and alignment/uniformity, and a collapse check.

Every function takes plain tensors (``[N, D]`` features, ``[N]`` integer labels),
runs on whatever device the features are on, and returns Python numbers. No
gradients are tracked. Labels below 0 mean "unlabelled" and are ignored wherever
labels are used.

Protocol stated with every number (as the design asks):

- kNN: cosine similarity on L2-normalised features, the ``k`` nearest train rows
  vote with weight ``exp(sim / temperature)`` (Wu et al. 2018, InstDisc;
  Caron et al. 2021, DINO), k = 20 and 200, temperature 0.07.
- Linear probe: multinomial logistic regression on standardised frozen
  features, Adam with a cosine learning rate, L2 penalty on the weights.
- RankMe, alpha-ReQ, uniformity and the feature std are label-free and computed
  on the train features (the larger set: RankMe wants up to 25,600 rows).
- LiDAR is label-free too but needs several augmented views of each image; the
  caller embeds them (``raysl.run_eval.evaluate_method``).

One module per family, every name imported from here: ``knn`` (kNN, linear probe), ``spectrum``
(RankMe, alpha-ReQ), ``views`` (LiDAR, view kNN agreement, agreed rank), ``geometry`` (alignment,
uniformity), ``collapse`` (feature std, collapse checks), ``features`` (all of one feature set at once);
``inputs`` checks the tensors they take.
"""

from raysl.evaluate.collapse import (
    COLLAPSE_DROP,
    MIN_COLLAPSE_ROWS,
    collapse_std,
    collapsed_by_training,
    is_collapsed,
)
from raysl.evaluate.features import evaluate_features
from raysl.evaluate.geometry import alignment, uniformity
from raysl.evaluate.knn import knn_accuracies, knn_accuracy, linear_probe_accuracy
from raysl.evaluate.spectrum import ALPHA_REQ_RANKS, alpha_req, alpha_req_score, rankme
from raysl.evaluate.views import agreed_rank, lidar, view_knn_agreement

__all__ = [
    "ALPHA_REQ_RANKS",
    "COLLAPSE_DROP",
    "MIN_COLLAPSE_ROWS",
    "agreed_rank",
    "alignment",
    "alpha_req",
    "alpha_req_score",
    "collapse_std",
    "collapsed_by_training",
    "evaluate_features",
    "is_collapsed",
    "knn_accuracies",
    "knn_accuracy",
    "lidar",
    "linear_probe_accuracy",
    "rankme",
    "uniformity",
    "view_knn_agreement",
]
