pytest_plugins = ["p2ptun.lab.pytest_plugin"]
