from autolabel.cli import main

main()
