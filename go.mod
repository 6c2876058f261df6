module github.com/cordon-dev/cordon

go 1.26.8

require (
	github.com/bytecodealliance/wasmtime-go/v39 v39.0.1
	go.etcd.io/bbolt v1.5.0
)

require golang.org/x/sys v0.45.0 // indirect
