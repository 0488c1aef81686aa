package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// The installer edits the node's primary CNI configuration as text: it finds
// the byte ranges of the top-level members and of the "plugins" elements
// with encoding/json's decoder, and splices only the ambit-cni entry in or
// out. Every other byte of the file (other plugins, key order, formatting)
// stays as it was, except where the ambit-cni entry must move to the end of
// the list and the list is rebuilt from its elements.

// pluginEntry is the ambit-cni entry the installer writes.
type pluginEntry struct {
	Type              string   `json:"type"`
	Socket            string   `json:"socket"`
	ExcludeNamespaces []string `json:"excludeNamespaces"`
	Timeout           string   `json:"timeout,omitempty"`
	LogFile           string   `json:"logFile,omitempty"`
}

// span is a JSON value's byte range in a file, and for an object member its
// key.
type span struct {
	key        string
	start, end int
}

// scanObject returns the members of the JSON object src, in order.
func scanObject(src []byte) ([]span, error) {
	dec := json.NewDecoder(bytes.NewReader(src))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	var members []span
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("invalid JSON: %v", err)
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("invalid JSON: %v", err)
		}
		end := int(dec.InputOffset())
		members = append(members, span{key: key, start: end - len(raw), end: end})
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("invalid JSON: data after the top-level object")
	}
	return members, nil
}

// scanArray returns the elements of the JSON array src[v.start:v.end], with
// offsets into src.
func scanArray(src []byte, v span) ([]span, error) {
	dec := json.NewDecoder(bytes.NewReader(src[v.start:v.end]))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, errors.New("not a list")
	}
	var elems []span
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("invalid JSON: %v", err)
		}
		end := v.start + int(dec.InputOffset())
		elems = append(elems, span{start: end - len(raw), end: end})
	}
	return elems, nil
}

func member(src []byte, members []span, key string) (span, bool, error) {
	var found []span
	for _, m := range members {
		if m.key == key {
			found = append(found, m)
		}
	}
	switch len(found) {
	case 0:
		return span{}, false, nil
	case 1:
		return found[0], true, nil
	}
	return span{}, false, fmt.Errorf("%q appears %d times", key, len(found))
}

func stringMember(src []byte, members []span, key string) (string, bool, error) {
	m, ok, err := member(src, members, key)
	if err != nil || !ok {
		return "", ok, err
	}
	var s string
	if err := json.Unmarshal(src[m.start:m.end], &s); err != nil {
		return "", true, fmt.Errorf("%q is not a string", key)
	}
	return s, true, nil
}

// checkVersion makes sure the plugin can run in a list of this cniVersion.
func checkVersion(src []byte, members []span) error {
	v, ok, err := stringMember(src, members, "cniVersion")
	if err != nil {
		return err
	}
	if !ok || v == "" {
		return errors.New(`no "cniVersion"`)
	}
	if !slices.Contains(supportedVersions.SupportedVersions(), v) {
		return fmt.Errorf("cniVersion %q: ambit-cni supports %s", v, strings.Join(supportedVersions.SupportedVersions(), ", "))
	}
	return nil
}

// pluginList is the parsed "plugins" list of a configuration list.
type pluginList struct {
	list  span   // the list value
	elems []span // its elements
	ours  []int  // indices of ambit-cni entries
}

func scanPlugins(src []byte, members []span) (pluginList, error) {
	m, ok, err := member(src, members, "plugins")
	if err != nil {
		return pluginList{}, err
	}
	if !ok {
		return pluginList{}, errors.New(`no "plugins" list`)
	}
	elems, err := scanArray(src, m)
	if err != nil {
		return pluginList{}, fmt.Errorf(`"plugins": %v`, err)
	}
	pl := pluginList{list: m, elems: elems}
	for i, e := range elems {
		var p struct {
			Type string `json:"type"`
		}
		if src[e.start] != '{' || json.Unmarshal(src[e.start:e.end], &p) != nil {
			return pluginList{}, fmt.Errorf(`"plugins"[%d] is not an object with a "type"`, i)
		}
		if p.Type == pluginType {
			pl.ours = append(pl.ours, i)
		}
	}
	return pl, nil
}

// layout is how a list lays out its elements: the whitespace before the
// first element, and before the closing bracket.
func (pl pluginList) layout(src []byte) (lead, tail string) {
	if len(pl.elems) == 0 {
		return "\n    ", "\n  "
	}
	return string(src[pl.list.start+1 : pl.elems[0].start]), string(src[pl.elems[len(pl.elems)-1].end : pl.list.end-1])
}

// encodeEntry marshals e for a list whose elements start after lead.
func encodeEntry(e pluginEntry, lead string) []byte {
	i := strings.LastIndexByte(lead, '\n')
	if i < 0 {
		b, _ := json.Marshal(e)
		return b
	}
	prefix := lead[i+1:]
	unit := "  "
	if strings.HasPrefix(prefix, "\t") {
		unit = "\t"
	}
	b, _ := json.MarshalIndent(e, prefix, unit)
	return b
}

func splice(src []byte, start, end int, with []byte) []byte {
	out := make([]byte, 0, len(src)-(end-start)+len(with))
	out = append(out, src[:start]...)
	out = append(out, with...)
	return append(out, src[end:]...)
}

// rebuild replaces the list with keep (element indices) and, if entry is not
// nil, the entry at the end, separated as the list's first element was.
func (pl pluginList) rebuild(src []byte, keep []int, entry []byte) []byte {
	lead, tail := pl.layout(src)
	var b bytes.Buffer
	b.WriteByte('[')
	n := 0
	add := func(v []byte) {
		if n > 0 {
			b.WriteByte(',')
		}
		b.WriteString(lead)
		b.Write(v)
		n++
	}
	for _, i := range keep {
		add(src[pl.elems[i].start:pl.elems[i].end])
	}
	if entry != nil {
		add(entry)
	}
	if n > 0 {
		b.WriteString(tail)
	}
	b.WriteByte(']')
	return splice(src, pl.list.start, pl.list.end, b.Bytes())
}

func (pl pluginList) others() []int {
	var keep []int
	for i := range pl.elems {
		if !slices.Contains(pl.ours, i) {
			keep = append(keep, i)
		}
	}
	return keep
}

// insertIntoList makes e the last plugin of the configuration list src,
// exactly once. changed is false when it already is.
func insertIntoList(src []byte, e pluginEntry) (out []byte, changed bool, err error) {
	members, err := scanObject(src)
	if err != nil {
		return nil, false, err
	}
	if err := checkVersion(src, members); err != nil {
		return nil, false, err
	}
	pl, err := scanPlugins(src, members)
	if err != nil {
		return nil, false, err
	}
	if len(pl.ours) == len(pl.elems) {
		return nil, false, errors.New("no primary plugin in the list before ambit-cni")
	}
	lead, _ := pl.layout(src)
	entry := encodeEntry(e, lead)
	last := len(pl.elems) - 1
	switch {
	case len(pl.ours) == 1 && pl.ours[0] == last:
		cur := pl.elems[last]
		if bytes.Equal(src[cur.start:cur.end], entry) {
			return src, false, nil
		}
		return splice(src, cur.start, cur.end, entry), true, nil
	case len(pl.ours) == 0:
		// Append after the last element, separated as that one was from
		// its predecessor.
		sep := lead
		if last > 0 {
			between := string(src[pl.elems[last-1].end:pl.elems[last].start])
			sep = between[strings.IndexByte(between, ',')+1:]
		}
		end := pl.elems[last].end
		return splice(src, end, end, append([]byte(","+sep), entry...)), true, nil
	}
	return pl.rebuild(src, pl.others(), entry), true, nil
}

// removeFromList takes every ambit-cni entry out of the configuration list
// src. empty reports that no plugin is left (the file should go).
func removeFromList(src []byte) (out []byte, changed, empty bool, err error) {
	members, err := scanObject(src)
	if err != nil {
		return nil, false, false, err
	}
	pl, err := scanPlugins(src, members)
	if err != nil {
		return nil, false, false, err
	}
	switch last := len(pl.elems) - 1; {
	case len(pl.ours) == 0:
		return src, false, false, nil
	case len(pl.ours) == len(pl.elems):
		return nil, true, true, nil
	case len(pl.ours) == 1 && pl.ours[0] == last:
		return splice(src, pl.elems[last-1].end, pl.elems[last].end, nil), true, false, nil
	}
	return pl.rebuild(src, pl.others(), nil), true, false, nil
}

// isList reports whether the configuration src is a list (has "plugins").
func isList(src []byte) (bool, error) {
	members, err := scanObject(src)
	if err != nil {
		return false, err
	}
	_, ok, err := member(src, members, "plugins")
	return ok, err
}

// convertToList turns the single-plugin configuration src into a
// configuration list with the same name and cniVersion whose plugins are
// src itself (its bytes kept, re-indented) and then e.
func convertToList(src []byte, e pluginEntry) ([]byte, error) {
	members, err := scanObject(src)
	if err != nil {
		return nil, err
	}
	if err := checkVersion(src, members); err != nil {
		return nil, err
	}
	typ, _, err := stringMember(src, members, "type")
	if err != nil {
		return nil, err
	}
	switch typ {
	case "":
		return nil, errors.New(`no plugin "type"`)
	case pluginType:
		return nil, errors.New("the configuration is ambit-cni alone, with no primary plugin")
	}
	name, ok, err := member(src, members, "name")
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New(`no network "name"`)
	}
	version, _, _ := member(src, members, "cniVersion")
	const lead = "\n    "
	// JSON strings hold no raw newlines, so indenting after each newline
	// changes only whitespace between tokens.
	plugin := strings.ReplaceAll(string(bytes.TrimSpace(src)), "\n", lead)
	var b bytes.Buffer
	fmt.Fprintf(&b, "{\n  \"cniVersion\": %s,\n  \"name\": %s,\n  \"plugins\": [%s%s,%s%s\n  ]\n}\n",
		src[version.start:version.end], src[name.start:name.end], lead, plugin, lead, encodeEntry(e, lead))
	return b.Bytes(), nil
}
