"""Adds the configs of your own project to the search path of distill's entry points.

Hydra calls every SearchPathPlugin installed beside it, for every Hydra application; this one
adds folders only when the application's primary configs are distill's (`distill.cli.CONFIG_DIR`),
after them, so a shipped option keeps its meaning and a new file adds an option:

- `./configs` of the directory the command starts in (your project's config folder, laid out
  like distill's: `data/`, `teacher/`, `student/`, `distill/`, `compress/`, ...), unless it is
  distill's own config folder (a source checkout started from its top);
- `configs/local/` of distill's config folder (git-ignored option files of one machine).
"""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class DistillSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from distill.cli import extra_config_dirs, is_distill_search_path

        if not is_distill_search_path(search_path):
            return
        for provider, path in extra_config_dirs():
            search_path.append(provider=provider, path=path)
