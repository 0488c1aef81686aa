package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "usage: ambit-image build"},
		{[]string{"push"}, "usage: ambit-image build"},
		{[]string{"build"}, "--binary, --ref, -o required"},
		{[]string{"build", "--binary=x", "--ref=ghcr.io/a/b:1", "-o", "x.tar", "extra"}, `unexpected arguments ["extra"]`},
	} {
		var out, errs bytes.Buffer
		if code := run(tc.args, &out, &errs); code != 2 || !strings.Contains(errs.String(), tc.want) {
			t.Errorf("run(%q) = %d, stderr %q; want 2 and %q", tc.args, code, errs.String(), tc.want)
		}
	}
}

func TestMissingBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "static", "controller")
	var out, errs bytes.Buffer
	code := run([]string{"build", "--binary", bin, "--ref", "ghcr.io/ambit-mesh/ambit-controller:dev", "-o", filepath.Join(t.TempDir(), "c.tar")}, &out, &errs)
	if want := bin + " not found: build it first (make images"; code != 1 || !strings.Contains(errs.String(), want) {
		t.Errorf("run = %d, stderr %q; want 1 and %q", code, errs.String(), want)
	}
}

func TestSourceDateEpoch(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	if got, err := sourceDateEpoch(); err != nil || got.Unix() != 1700000000 {
		t.Errorf("sourceDateEpoch() = %v, %v", got, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if _, err := sourceDateEpoch(); err == nil {
		t.Error("SOURCE_DATE_EPOCH=yesterday accepted")
	}
}
