// Package v1alpha1 is Ambit's control API (ambit.v1alpha1): the Config
// stream that carries each proxy's view of the mesh from the controller, and
// the Certificates service that signs workload certificates. The *.pb.go
// files are generated from the .proto files beside them by `make generate`
// (protoc from Debian's protobuf-compiler, plugins pinned in go.mod).
package v1alpha1

//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --plugin=protoc-gen-go-grpc=$(go tool -n protoc-gen-go-grpc) --proto_path=. --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative config.proto certificates.proto"
