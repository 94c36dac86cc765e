"""medcl_extras: a package of a MedCL user, outside the MedCL repository (docs/extending.md).

Importing it registers a head kind ("regression"), a buffer policy ("first_come") and a strategy
("l2_init"); a config that names any of its classes by ``class_path`` imports it.
"""
from medcl_extras import heads, policies, strategies  # noqa: F401  (registration on import)
