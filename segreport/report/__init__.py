"""The report: the pages from the templates, the figures, the downloads, the tracking page, the notebook helpers, and the engines (Quarto, or pandoc + typst) with the render cache."""
