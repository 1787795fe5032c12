from mg_mlflow.cli import main

main()
