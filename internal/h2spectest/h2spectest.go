// Package h2spectest runs h2spec, the HTTP/2 conformance tool, against a
// server in a test: the tool built from the Go module proxy into the
// machine's tool cache (tools/h2spec), its JUnit report read case by case.
package h2spectest

import (
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Bin is the h2spec binary: AMBIT_H2SPEC, or tools/h2spec/build.sh's
// (built the first time, a few seconds).
func Bin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("AMBIT_H2SPEC"); p != "" {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command(filepath.Join(filepath.Dir(file), "..", "..", "tools", "h2spec", "build.sh"))
	cmd.Stderr = os.Stderr
	dir, err := cmd.Output()
	if err != nil {
		t.Fatalf("build h2spec (tools/h2spec/build.sh): %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(dir)), "h2spec")
}

// Run runs every h2spec case against host:port (cleartext HTTP/2 with prior
// knowledge; extra adds flags) and fails the test for each failed case
// that notApplicable (keyed "<package>: <case>", valued why) does not
// list. It returns how many cases ran.
func Run(t testing.TB, host, port string, notApplicable map[string]string, extra ...string) int {
	t.Helper()
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	args := append([]string{"-h", host, "-p", port, "-o", "3", "-j", report}, extra...)
	out, err := exec.Command(Bin(t), args...).CombinedOutput()
	data, rerr := os.ReadFile(report)
	if rerr != nil {
		t.Fatalf("h2spec (%v) wrote no report: %v\n%s", err, rerr, out)
	}
	var suites struct {
		Suites []struct {
			Cases []struct {
				Package string  `xml:"package,attr"`
				Name    string  `xml:"classname,attr"`
				Error   *string `xml:"error"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(data, &suites); err != nil {
		t.Fatal(err)
	}
	total, failed := 0, 0
	for _, su := range suites.Suites {
		for _, c := range su.Cases {
			total++
			if c.Error == nil {
				continue
			}
			key := c.Package + ": " + c.Name
			if why, ok := notApplicable[key]; ok {
				t.Logf("not applicable: %s (%s)", key, why)
				continue
			}
			failed++
			t.Errorf("h2spec %s: expected %s", key, strings.TrimSpace(*c.Error))
		}
	}
	if total < 140 {
		t.Fatalf("h2spec ran %d cases; want its full suite (145)\n%s", total, out)
	}
	t.Logf("h2spec: %d cases, %d failed beyond the %d that do not apply", total, failed, len(notApplicable))
	return total
}
