from harmon.train.launch import main

main()
