package multipass

import (
	"bytes"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// instance is the daemon's record of one instance.
type instance struct {
	Name         string `json:"name"`
	LabName      string `json:"lab_name"`
	ImageRelease string `json:"image_release"`
	ImageHash    string `json:"image_hash"`
	CPUs         int    `json:"cpus"`
	Memory       string `json:"memory"`
	Disk         string `json:"disk"`
	// State is what the last command left: Starting, Running, Stopped or
	// Suspended. A launch killed before the VM was ready leaves Starting.
	State   string `json:"state"`
	Deleted bool   `json:"deleted"`
}

// The JSON Multipass prints comes from Qt's QJsonDocument::toJson
// (src/client/cli/formatter/json_formatter.cpp): four-space indents, keys
// sorted, an empty array or object still split over two lines, nothing
// escaped but what JSON requires. jsonObject and jsonArray keep that shape;
// encoding/json would not (it inlines empty containers and escapes <>&).
type (
	jsonObject map[string]any
	jsonArray  []any
)

func qtJSON(v jsonObject) []byte {
	var b bytes.Buffer
	writeJSON(&b, v, 0)
	b.WriteByte('\n')
	return b.Bytes()
}

func writeJSON(b *bytes.Buffer, v any, indent int) {
	pad := strings.Repeat("    ", indent)
	switch v := v.(type) {
	case jsonObject:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString("{\n")
		for i, k := range keys {
			b.WriteString(pad + "    ")
			writeString(b, k)
			b.WriteString(": ")
			writeJSON(b, v[k], indent+1)
			if i < len(keys)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(pad + "}")
	case jsonArray:
		b.WriteString("[\n")
		for i, e := range v {
			b.WriteString(pad + "    ")
			writeJSON(b, e, indent+1)
			if i < len(v)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(pad + "]")
	case string:
		writeString(b, v)
	case int64:
		b.WriteString(strconv.FormatInt(v, 10))
	case float64:
		b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	default:
		panic("labmultipass: no JSON form for a value of this type")
	}
}

func writeString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20:
			b.WriteString(`\u00` + strconv.FormatInt(int64(r)>>4, 16) + strconv.FormatInt(int64(r)&0xf, 16))
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
}

// runtimeInfo is what Multipass reads from a running instance
// (src/daemon/runtime_instance_info_helper.cpp); the zero value is an
// instance that is not running, which gets none of it.
type runtimeInfo struct {
	running                  bool
	load                     []float64
	memUsed, memTotal        int64
	diskUsed, diskTotal, cpu string
	release                  string
	ipv4                     []string // the management address first
}

// infoEntry is one instance of `info --format json`.
func infoEntry(in *instance, state string, rt runtimeInfo) jsonObject {
	load := jsonArray{}
	for _, l := range rt.load {
		load = append(load, l)
	}
	disk, memory := jsonObject{}, jsonObject{}
	ipv4 := jsonArray{}
	if rt.running {
		disk["used"], disk["total"] = rt.diskUsed, rt.diskTotal
		memory["used"], memory["total"] = rt.memUsed, rt.memTotal
		ipv4 = addresses(rt.ipv4)
	}
	return jsonObject{
		"state":          state,
		"image_hash":     in.ImageHash,
		"image_release":  in.ImageRelease,
		"release":        rt.release,
		"cpu_count":      rt.cpu,
		"snapshot_count": "0",
		"load":           load,
		"disks":          jsonObject{"sda1": disk},
		"memory":         memory,
		"ipv4":           ipv4,
		"mounts":         jsonObject{},
	}
}

// addresses is Multipass's ipv4 list of a running instance: "N/A" when it
// has no address yet.
func addresses(ips []string) jsonArray {
	out := jsonArray{}
	for _, ip := range ips {
		out = append(out, ip)
	}
	if len(out) == 0 {
		out = append(out, "N/A")
	}
	return out
}

// listEntry is one instance of `list --format json`: the image's release
// ("Ubuntu 22.04 LTS"), never the running system's.
func listEntry(in *instance, state string, rt runtimeInfo) jsonObject {
	release := "Not Available"
	if in.ImageRelease != "" {
		release = "Ubuntu " + in.ImageRelease
	}
	ipv4 := jsonArray{}
	if rt.running {
		ipv4 = addresses(rt.ipv4)
	}
	return jsonObject{"name": in.Name, "state": state, "ipv4": ipv4, "release": release}
}

// validName is Multipass's rule for instance names (mp::utils::valid_hostname).
var validName = regexp.MustCompile(`^([a-zA-Z]|[a-zA-Z][a-zA-Z0-9\-]*[a-zA-Z0-9])$`)

// memorySize parses a size as Multipass does (mp::in_bytes): bytes, or a
// decimal with K, M or G (binary units), optionally followed by B or iB.
var memorySizeRE = regexp.MustCompile(`(?i)^\s*(\d+)(?:\.(\d+))?(?:([KMG])(?:i?B)?|B)?\s*$`)

func memorySize(s string) (int64, bool) {
	m := memorySizeRE.FindStringSubmatch(s)
	if m == nil || (m[2] != "" && m[3] == "") {
		return 0, false
	}
	val, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, false
	}
	unit := map[string]int64{"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[strings.ToLower(m[3])]
	bytes := val * unit
	if m[2] != "" {
		frac, _ := strconv.ParseFloat("0."+m[2], 64)
		bytes += int64(frac * float64(unit))
	}
	return bytes, true
}

// shellQuote escapes one argument as Multipass does before sending a
// command line over SSH (mp::utils::escape_for_shell): a backslash before
// every character outside a safe set, a newline wrapped in double quotes.
func shellQuote(arg string) string {
	if arg == "" {
		return "''"
	}
	var b strings.Builder
	for i := 0; i < len(arg); i++ {
		c := arg[i]
		if c == '\n' {
			b.WriteString("\"\n\"")
			continue
		}
		if c < 0x25 || c > 0x7a || (c > 0x25 && c < 0x2b) || (c > 0x5a && c < 0x5f) ||
			c == 0x2c || c == 0x3b || c == 0x3c || c == 0x3e || c == 0x3f || c == 0x60 {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	return b.String()
}

// commandLine joins args as the SSH exec request Multipass sends.
func commandLine(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
	}
	return strings.Join(quoted, " ")
}
