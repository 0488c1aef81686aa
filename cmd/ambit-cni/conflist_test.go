package main

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

var testEntry = pluginEntry{
	Type:              pluginType,
	Socket:            "/var/run/ambit/cni.sock",
	ExcludeNamespaces: []string{"kube-system", "ambit-system"},
	Timeout:           "30s",
}

// flannelList is a primary configuration as flannel writes it, with a
// second plugin and fields in an order of their own.
const flannelList = `{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      },
      "zeta": 1.50,
      "alpha": "\u00e9"
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ],
  "x-vendor": {"b": 1, "a": [1,2]}
}
`

const flannelWithEntry = `{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      },
      "zeta": 1.50,
      "alpha": "\u00e9"
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    },
    {
      "type": "ambit-cni",
      "socket": "/var/run/ambit/cni.sock",
      "excludeNamespaces": [
        "kube-system",
        "ambit-system"
      ],
      "timeout": "30s"
    }
  ],
  "x-vendor": {"b": 1, "a": [1,2]}
}
`

// pluginTypes parses src as a runtime would and returns the plugins' types.
func pluginTypes(t *testing.T, src []byte) []string {
	t.Helper()
	list, err := libcni.ConfListFromBytes(src)
	if err != nil {
		t.Fatalf("libcni cannot load the result: %v\n%s", err, src)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	return types
}

func TestInsertIntoList(t *testing.T) {
	out, changed, err := insertIntoList([]byte(flannelList), testEntry)
	if err != nil {
		t.Fatal(err)
	}
	if !changed || string(out) != flannelWithEntry {
		t.Fatalf("changed=%v, got\n%s\nwant\n%s", changed, out, flannelWithEntry)
	}
	if got := pluginTypes(t, out); !reflect.DeepEqual(got, []string{"flannel", "portmap", "ambit-cni"}) {
		t.Errorf("plugins %v", got)
	}
	// Idempotent.
	again, changed, err := insertIntoList(out, testEntry)
	if err != nil || changed || !bytes.Equal(again, out) {
		t.Errorf("second insert: changed=%v err=%v", changed, err)
	}
	// Removing restores the original byte for byte.
	back, changed, empty, err := removeFromList(out)
	if err != nil || !changed || empty || string(back) != flannelList {
		t.Errorf("remove: changed=%v empty=%v err=%v\n%s", changed, empty, err, back)
	}
	if _, changed, _, _ := removeFromList(back); changed {
		t.Error("removing from a list without the entry changed it")
	}
}

func TestInsertUpdatesInPlace(t *testing.T) {
	e := testEntry
	e.Socket = "/run/other/cni.sock"
	e.LogFile = "/var/log/ambit-cni.log"
	out, changed, err := insertIntoList([]byte(flannelWithEntry), e)
	if err != nil || !changed {
		t.Fatalf("changed=%v err=%v", changed, err)
	}
	want := strings.Replace(flannelWithEntry, `"/var/run/ambit/cni.sock"`, `"/run/other/cni.sock"`, 1)
	want = strings.Replace(want, `"timeout": "30s"`, `"timeout": "30s",`+"\n      "+`"logFile": "/var/log/ambit-cni.log"`, 1)
	if string(out) != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
}

func TestInsertMovesEntryLastOnce(t *testing.T) {
	src := `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ambit-cni","socket":"/old"},{"type":"calico","mtu":0},{"type":"ambit-cni"},{"type":"bandwidth","capabilities":{"bandwidth":true}}]}`
	out, changed, err := insertIntoList([]byte(src), testEntry)
	if err != nil || !changed {
		t.Fatalf("changed=%v err=%v", changed, err)
	}
	want := `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"calico","mtu":0},{"type":"bandwidth","capabilities":{"bandwidth":true}},{"type":"ambit-cni","socket":"/var/run/ambit/cni.sock","excludeNamespaces":["kube-system","ambit-system"],"timeout":"30s"}]}`
	if string(out) != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
	if got := pluginTypes(t, out); !reflect.DeepEqual(got, []string{"calico", "bandwidth", "ambit-cni"}) {
		t.Errorf("plugins %v", got)
	}
	back, changed, _, err := removeFromList(out)
	if err != nil || !changed || string(back) != `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"calico","mtu":0},{"type":"bandwidth","capabilities":{"bandwidth":true}}]}` {
		t.Errorf("remove: %v %s", err, back)
	}
}

func TestInsertTabIndented(t *testing.T) {
	src := "{\n\t\"cniVersion\": \"1.0.0\",\n\t\"name\": \"n\",\n\t\"plugins\": [\n\t\t{\"type\": \"ptp\"}\n\t]\n}\n"
	out, _, err := insertIntoList([]byte(src), pluginEntry{Type: pluginType, Socket: "/s", ExcludeNamespaces: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n\t\"cniVersion\": \"1.0.0\",\n\t\"name\": \"n\",\n\t\"plugins\": [\n\t\t{\"type\": \"ptp\"},\n\t\t{\n\t\t\t\"type\": \"ambit-cni\",\n\t\t\t\"socket\": \"/s\",\n\t\t\t\"excludeNamespaces\": []\n\t\t}\n\t]\n}\n"
	if string(out) != want {
		t.Errorf("got\n%q\nwant\n%q", out, want)
	}
}

func TestConvertToList(t *testing.T) {
	conf := `{
  "cniVersion": "0.4.0",
  "name": "mynet",
  "type": "bridge",
  "bridge": "cni0",
  "ipam": {
    "type": "host-local",
    "subnet": "10.22.0.0/16"
  }
}`
	out, err := convertToList([]byte(conf+"\n"), testEntry)
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "cniVersion": "0.4.0",
  "name": "mynet",
  "plugins": [
    {
      "cniVersion": "0.4.0",
      "name": "mynet",
      "type": "bridge",
      "bridge": "cni0",
      "ipam": {
        "type": "host-local",
        "subnet": "10.22.0.0/16"
      }
    },
    {
      "type": "ambit-cni",
      "socket": "/var/run/ambit/cni.sock",
      "excludeNamespaces": [
        "kube-system",
        "ambit-system"
      ],
      "timeout": "30s"
    }
  ]
}
`
	if string(out) != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
	list, err := libcni.ConfListFromBytes(out)
	if err != nil {
		t.Fatal(err)
	}
	if list.Name != "mynet" || list.CNIVersion != "0.4.0" || len(list.Plugins) != 2 {
		t.Fatalf("list %+v", list)
	}
	var a, b any
	json.Unmarshal([]byte(conf), &a)
	json.Unmarshal(list.Plugins[0].Bytes, &b)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("first plugin %s differs from the original configuration", list.Plugins[0].Bytes)
	}
	if _, changed, err := insertIntoList(out, testEntry); err != nil || changed {
		t.Errorf("insert into the converted list: changed=%v err=%v", changed, err)
	}
}

func TestMalformedConfigurations(t *testing.T) {
	for _, tc := range []struct {
		name, src, want string
	}{
		{"not json", `{"cniVersion": "1.0.0", "plugins": [`, "invalid JSON"},
		{"array", `[{"type":"x"}]`, "not a JSON object"},
		{"trailing", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"}]} {}`, "data after the top-level object"},
		{"no plugins", `{"cniVersion":"1.0.0","name":"n","plugin":[]}`, `no "plugins" list`},
		{"plugins not a list", `{"cniVersion":"1.0.0","name":"n","plugins":{"type":"x"}}`, "not a list"},
		{"plugin not an object", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"},"y"]}`, `"plugins"[1] is not an object`},
		{"duplicate plugins", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x"}],"plugins":[]}`, `"plugins" appears 2 times`},
		{"old version", `{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"x"}]}`, `cniVersion "0.2.0": ambit-cni supports 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0`},
		{"no version", `{"name":"n","plugins":[{"type":"x"}]}`, `no "cniVersion"`},
		{"only ours", `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ambit-cni"}]}`, "no primary plugin"},
	} {
		if _, _, err := insertIntoList([]byte(tc.src), testEntry); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.want)
		}
	}
	for _, tc := range []struct {
		name, src, want string
	}{
		{"no type", `{"cniVersion":"1.0.0","name":"n"}`, `no plugin "type"`},
		{"no name", `{"cniVersion":"1.0.0","type":"bridge"}`, `no network "name"`},
		{"ours", `{"cniVersion":"1.0.0","name":"n","type":"ambit-cni"}`, "ambit-cni alone"},
		{"old", `{"cniVersion":"0.1.0","name":"n","type":"bridge"}`, `cniVersion "0.1.0"`},
	} {
		if _, err := convertToList([]byte(tc.src), testEntry); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("convert %s: error %v, want %q", tc.name, err, tc.want)
		}
	}
}
