"""Facts every floor reads: the column schema, the parameters, the run's files on disk (store), safe CSV and number formats, the package's resources."""
