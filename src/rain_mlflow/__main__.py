from rain_mlflow.cli import main

main()
