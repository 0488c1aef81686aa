package main

import (
	"errors"
	"log/slog"

	"github.com/ambit-mesh/ambit/internal/controller"
)

// kubernetesSource is the Kubernetes source and TokenReview authenticator
// (package kubesource), once it is part of the build.
func kubernetesSource(*slog.Logger) (controller.Source, controller.NodeAuthenticator, error) {
	return nil, nil, errors.New("this build has no Kubernetes source yet; run with --source file")
}
