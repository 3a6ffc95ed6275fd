"""Stage 2 -- understand the dataset: core-set selection and the dataset audit.

* :class:`KCoverSelector` -- greedy max K-cover (facility location) on a sparse kNN graph,
  plus threshold cover and k-center objectives;
* :class:`KCenterSelector`, :class:`RandomSelector` -- the baselines, same interface;
* :class:`DatasetAuditor` -- near-duplicates, blank/saturated/blurry patches, embedding
  outliers, diversity summary;
* :mod:`~biodatacentric.assess.plots` -- embedding map and patch montage figures.
"""

from .audit import AuditWarning, DatasetAuditor, diversity_summary
from .knn import ivf_knn_search, knn_search, l2_normalize, similarity_graph
from .selectors import (KCenterSelector, KCoverSelector, RandomSelector, evaluate_selection,
                        suggest_n_select)

__all__ = ["KCoverSelector", "KCenterSelector", "RandomSelector", "DatasetAuditor", "AuditWarning",
           "evaluate_selection", "suggest_n_select", "diversity_summary", "knn_search",
           "ivf_knn_search", "similarity_graph", "l2_normalize"]
