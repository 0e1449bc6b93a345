"""Network building blocks shared by several detection methods."""
