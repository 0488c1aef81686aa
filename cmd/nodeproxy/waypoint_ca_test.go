package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/internal/identity"
)

// The waypoint finds the controller's CA roots in --controller-ca, else in
// $AMBIT_CONTROLLER_CA_PEM (where the controller's waypoint Deployments put
// them); roots that cannot be used stop it with an error naming where they
// came from.
func TestWaypointControllerCA(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	newCA := func() *identity.CA {
		ca, err := identity.GenerateCA(td, time.Hour, nil)
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	a, b := newCA(), newCA()
	keyPEM, err := identity.EncodeKey(a.Key())
	if err != nil {
		t.Fatal(err)
	}
	fileA := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(fileA, identity.EncodeCert(a.Certificate()), 0o600); err != nil {
		t.Fatal(err)
	}
	both := append(identity.EncodeCert(a.Certificate()), identity.EncodeCert(b.Certificate())...)

	// The variable, with two roots.
	t.Setenv(controllerCAEnv, string(both))
	roots, err := controllerRoots("")
	if err != nil || len(roots) != 2 || !roots[0].Equal(a.Certificate()) || !roots[1].Equal(b.Certificate()) {
		t.Errorf("from $%s: %d roots, %v", controllerCAEnv, len(roots), err)
	}
	// A file given on the command line wins over the variable.
	t.Setenv(controllerCAEnv, string(identity.EncodeCert(b.Certificate())))
	if roots, err := controllerRoots(fileA); err != nil || len(roots) != 1 || !roots[0].Equal(a.Certificate()) {
		t.Errorf("--controller-ca beside $%s: %d roots, %v", controllerCAEnv, len(roots), err)
	}
	if _, err := controllerRoots(filepath.Join(t.TempDir(), "absent")); err == nil || !strings.HasPrefix(err.Error(), "--controller-ca: ") {
		t.Errorf("an absent --controller-ca file: %v", err)
	}

	// Bad PEM in the variable: `nodeproxy waypoint` stops before it dials
	// anything, and says which variable is wrong and why.
	base := []string{"waypoint", "--name=shop/edge", "--controller=127.0.0.1:1", "--token-file=" + filepath.Join(t.TempDir(), "token"),
		"--listen=127.0.0.1:0", "--admin=", "--metrics=", "--ready="}
	for _, tc := range []struct{ name, pem, want string }{
		{"garbage", "not PEM at all", "no PEM CERTIFICATE block"},
		{"a certificate that does not parse", "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n", "x509"},
		{"a private key", string(identity.EncodeCert(a.Certificate())) + string(keyPEM), "PRIVATE KEY"},
	} {
		t.Setenv(controllerCAEnv, tc.pem)
		var out, errs bytes.Buffer
		code := run(base, &out, &errs)
		if code != 1 || !strings.Contains(errs.String(), "$"+controllerCAEnv) || !strings.Contains(errs.String(), tc.want) {
			t.Errorf("%s in $%s: exit %d, stderr %q; want 1 and an error naming the variable and %q", tc.name, controllerCAEnv, code, errs.String(), tc.want)
		}
	}

	// Neither the flag nor the variable: a usage error that names both.
	t.Setenv(controllerCAEnv, "")
	var out, errs bytes.Buffer
	if code := run(base, &out, &errs); code != 2 || !strings.Contains(errs.String(), "--controller-ca FILE (or $"+controllerCAEnv+")") {
		t.Errorf("no roots: exit %d, stderr %q; want a usage error", code, errs.String())
	}
}
