module streamcart/tools/loadgen

go 1.21
