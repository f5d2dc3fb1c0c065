#!/usr/bin/env python3
# moto_server whose ranged GETs cost what they return: moto reads a whole
# object from its temporary file for every ranged GET and slices it
# (FakeKey.value, then the range header's handling), which makes a restore
# from it quadratic in the archive's size. Here the object's bytes are
# cached in memory once read. Run it as the s3 rows' server with
#   MOTO_SERVER=bench/moto-ranged.py bench/bench.sh --only s3
# using a python3 that has moto installed.
import sys

import moto.s3.models as models

_value = models.FakeKey.value


def _get(self):
    cached = self.__dict__.get("_ranged_cache")
    if cached is None:
        cached = _value.fget(self)
        self.__dict__["_ranged_cache"] = cached
    return cached


def _set(self, value):
    self.__dict__["_ranged_cache"] = None
    _value.fset(self, value)


models.FakeKey.value = property(_get, _set)

from moto.server import main  # noqa: E402

sys.exit(main())
