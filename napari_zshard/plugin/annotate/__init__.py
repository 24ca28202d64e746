"""The Annotate dock widget (:mod:`.widget`) and its panels: the region in the viewer
(:mod:`.view`), the export with progress (:mod:`.export_panel`), points and shapes
(:mod:`.geometry_panel`) and the conflicts of a merge (:mod:`.conflict_list`)."""
