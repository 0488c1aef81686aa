package meshspec

import (
	"errors"
	"testing"

	"github.com/ambit-mesh/ambit/internal/meshconfig"
)

// YAML syntax errors name the line the problem is on. yaml.v3 counts a
// parser error's line from 0 (one line early, none on the first line) and
// names where the enclosing document began instead of the problem in any
// document after the first; scanner errors it counts from 1.
func TestSyntaxErrorLines(t *testing.T) {
	const ns = "apiVersion: v1\nkind: Namespace\n"
	for _, tc := range []struct {
		name, doc string
		line      int
		problem   string
	}{
		{"key less indented", ns + "metadata:\n  name: a\n labels: {}\n", 5, "did not find expected key"},
		{"list item in a mapping", ns + "- x\n", 3, "did not find expected key"},
		{"list item in a mapping, first line", "- a\nb: c\n", 2, "did not find expected '-' indicator"},
		{"flow list not closed", ns + "metadata:\n  labels: [a, b\n  name: x\n", 4, "did not find expected ',' or ']'"},
		{"flow list closed by a brace", ns + "metadata: {name: [a, b}\n", 3, "did not find expected ',' or ']'"},
		{"nothing after [", "kind: [", 1, "did not find expected node content"},
		{"nothing after [, newline", "kind: [\n", 1, "did not find expected node content"},
		{"second document", ns + "metadata: {name: a}\n---\n" + ns + "metadata:\n  name: b\n  labels: x\n y: 1\n", 10, "did not find expected key"},
		{"after a comment", "# shop\n" + ns + "metadata:\n  labels:\n    x: y\n   z: 1\n", 7, "did not find expected key"},
		{"directive twice", "%YAML 1.1\n%YAML 1.1\n---\na: 1\n", 2, "found duplicate %YAML directive"},
		// Scanner errors: yaml.v3 has these right, except on line 1.
		{"tab", ns + "metadata:\n\tname: a\n", 4, "found character that cannot start any token"},
		{"mapping value in a value", ns + "metadata: {name: a}\nspec: a: b\n", 4, "mapping values are not allowed in this context"},
		{"mapping value in a value, first line", "a: b: c\n", 1, "mapping values are not allowed in this context"},
		{"quote not closed", ns + "metadata: {name: \"a}\n", 3, "found unexpected end of stream"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("x.yaml", []byte(tc.doc))
			var e *meshconfig.Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v, want a *Error", err)
			}
			if e.Line != tc.line || e.Msg != tc.problem+"; fix the YAML syntax" {
				t.Errorf("got line %d %q, want line %d %q", e.Line, e.Msg, tc.line, tc.problem)
			}
		})
	}
	// Not about a place: no line.
	_, err := Parse("x.yaml", []byte(ns+"metadata: {name: a, labels: {x: *y}}\n"))
	if err == nil || err.Error() != "x.yaml: unknown anchor 'y' referenced; fix the YAML syntax" {
		t.Errorf("unknown anchor: %v", err)
	}
}
