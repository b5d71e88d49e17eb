export PATH=/usr/sbin:/usr/bin:/sbin:/bin SOCKETRACE_REQUIRE_KERNEL_TESTS=1 PYTHONDONTWRITEBYTECODE=1
.venv/bin/pytest -p no:cacheprovider -q -x tests/kernel/test_features.py tests/kernel/test_lifecycle.py -k "summary_counts or spread or closed_pipe or second_signal" 2>&1 | tail -30
