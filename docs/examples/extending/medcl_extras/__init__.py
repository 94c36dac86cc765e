"""medcl_extras: a package of a MedCL user, outside the MedCL repository (docs/extending.md).

Importing it registers a head kind ("regression"), a buffer policy ("first_come"), a strategy ("l2_init") and a continual metric ("accuracy_spread");
a config that names any of its classes by ``class_path`` imports it.
"""
from medcl_extras import heads, metrics, policies, strategies  # noqa: F401  (registration on import)
