package cgroup2

import "testing"

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b\011c`: "/a b\tc",
		`/plain`:       "/plain",
		`/end\040`:     "/end ",
		`/short\04`:    `/short\04`,
		`/bad\999`:     `/bad\999`,
	} {
		if got := UnescapeMount(in); got != want {
			t.Errorf("UnescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}
