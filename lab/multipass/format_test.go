package multipass

import (
	"encoding/json"
	"os"
	"testing"
)

// Qt's layout, as multipass prints it (and pkg/machine/multipass/testdata holds):
// sorted keys, four spaces, empty containers over two lines, numbers for
// memory and load, strings for sizes and counts.
func TestInfoJSONStopped(t *testing.T) {
	in := &instance{Name: "vm1", ImageRelease: "22.04 LTS", ImageHash: "abc"}
	got := string(qtJSON(jsonObject{"errors": jsonArray{}, "info": jsonObject{"vm1": infoEntry(in, "Stopped", runtimeInfo{})}}))
	want := `{
    "errors": [
    ],
    "info": {
        "vm1": {
            "cpu_count": "",
            "disks": {
                "sda1": {
                }
            },
            "image_hash": "abc",
            "image_release": "22.04 LTS",
            "ipv4": [
            ],
            "load": [
            ],
            "memory": {
            },
            "mounts": {
            },
            "release": "",
            "snapshot_count": "0",
            "state": "Stopped"
        }
    }
}
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestInfoJSONRunning(t *testing.T) {
	in := &instance{Name: "vm1", ImageRelease: "22.04 LTS"}
	rt := runtimeInfo{running: true, load: []float64{0.08, 0, 1.5}, memUsed: 187625472, memTotal: 1003474944,
		diskUsed: "1907142656", diskTotal: "4123820032", cpu: "2", release: "Debian GNU/Linux 12 (bookworm)"}
	var got struct {
		Info map[string]struct {
			IPv4   []string                  `json:"ipv4"`
			Load   []any                     `json:"load"`
			Memory map[string]any            `json:"memory"`
			Disks  map[string]map[string]any `json:"disks"`
			CPU    any                       `json:"cpu_count"`
		} `json:"info"`
	}
	if err := json.Unmarshal(qtJSON(jsonObject{"info": jsonObject{"vm1": infoEntry(in, "Running", rt)}}), &got); err != nil {
		t.Fatal(err)
	}
	e := got.Info["vm1"]
	if len(e.IPv4) != 1 || e.IPv4[0] != "N/A" {
		t.Errorf("ipv4 of a running instance with no address: got %v, want [N/A]", e.IPv4)
	}
	if _, ok := e.Memory["total"].(float64); !ok {
		t.Errorf("memory.total: got %T, want a number", e.Memory["total"])
	}
	if _, ok := e.Disks["sda1"]["total"].(string); !ok {
		t.Errorf("disks.sda1.total: got %T, want a string", e.Disks["sda1"]["total"])
	}
	if _, ok := e.CPU.(string); !ok || len(e.Load) != 3 {
		t.Errorf("cpu_count %T, load %v: want a string and three numbers", e.CPU, e.Load)
	}
	rt.ipv4 = []string{"10.214.0.2", "10.42.0.0"}
	entry := infoEntry(in, "Running", rt)
	if ips := entry["ipv4"].(jsonArray); len(ips) != 2 || ips[0] != "10.214.0.2" {
		t.Errorf("ipv4: got %v, want the management address first", ips)
	}
}

func TestListJSON(t *testing.T) {
	in := &instance{Name: "vm1", ImageRelease: "22.04 LTS"}
	got := string(qtJSON(jsonObject{"list": jsonArray{listEntry(in, "Deleted", runtimeInfo{})}}))
	want := `{
    "list": [
        {
            "ipv4": [
            ],
            "name": "vm1",
            "release": "Ubuntu 22.04 LTS",
            "state": "Deleted"
        }
    ]
}
`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// The fake pkg/machine/multipass replays is in the same layout.
func TestSameLayoutAsRecordedOutput(t *testing.T) {
	data, err := os.ReadFile("../../pkg/machine/multipass/testdata/info.json")
	if err != nil {
		t.Skip(err)
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	if got := string(qtJSON(toQt(v).(jsonObject))); got != string(data)+"\n" && got != string(data) {
		t.Errorf("re-encoded testdata differs:\n%s\nwant\n%s", got, data)
	}
}

func toQt(v any) any {
	switch v := v.(type) {
	case map[string]any:
		o := jsonObject{}
		for k, e := range v {
			o[k] = toQt(e)
		}
		return o
	case []any:
		a := jsonArray{}
		for _, e := range v {
			a = append(a, toQt(e))
		}
		return a
	case float64:
		if v == float64(int64(v)) && v > 1000 {
			return int64(v)
		}
	}
	return v
}

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{{"vm1", true}, {"a", true}, {"k3s-agent-1", true}, {"VM-1a", true}, {"1vm", false}, {"vm-", false}, {"vm_1", false}, {"", false}, {"v.m", false}} {
		if got := validName.MatchString(tc.name); got != tc.ok {
			t.Errorf("%q: got valid=%v, want %v", tc.name, got, tc.ok)
		}
	}
}

func TestMemorySize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{{"1G", 1 << 30, true}, {"512M", 512 << 20, true}, {"1024", 1024, true}, {"42MiB", 42 << 20, true}, {"0.5G", 1 << 29, true},
		{"1234B", 1234, true}, {"1.5", 0, false}, {"big", 0, false}, {"-1G", 0, false}} {
		got, ok := memorySize(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%q: got %d %v, want %d %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestCommandLine(t *testing.T) {
	got := commandLine([]string{"sudo", "--", "sh", "-c", "echo 'a b' > /tmp/x; true", ""})
	want := `sudo -- sh -c echo\ \'a\ b\'\ \>\ /tmp/x\;\ true ''`
	if got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}
