package hostsfile

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var addrComparer = cmp.Comparer(func(a, b netip.Addr) bool { return a == b })

// A stock Ubuntu cloud image /etc/hosts.
const ubuntuHosts = `127.0.0.1 localhost

# The following lines are desirable for IPv6 capable hosts
::1 ip6-localhost ip6-loopback
fe00::0 ip6-localnet
ff00::0 ip6-mcastprefix
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
ff02::3 ip6-allhosts
`

func istiod(ip string) []Entry {
	return []Entry{{IP: netip.MustParseAddr(ip), Names: []string{"istiod.istio-system.svc"}}}
}

func TestMerge(t *testing.T) {
	two := []Entry{
		{IP: netip.MustParseAddr("10.0.0.7"), Names: []string{"istiod.istio-system.svc", "istiod"}},
		{IP: netip.MustParseAddr("fd00::7"), Names: []string{"eastwest.istio-system.svc"}},
	}
	tests := []struct {
		name    string
		in      string
		entries []Entry
		want    string
	}{
		{
			name:    "empty file",
			in:      "",
			entries: istiod("10.0.0.7"),
			want:    beginMarker + "\n10.0.0.7\tistiod.istio-system.svc\n" + endMarker + "\n",
		},
		{
			name:    "appended after user lines",
			in:      ubuntuHosts,
			entries: two,
			want: ubuntuHosts + beginMarker + "\n" +
				"10.0.0.7\tistiod.istio-system.svc istiod\n" +
				"fd00::7\teastwest.istio-system.svc\n" +
				endMarker + "\n",
		},
		{
			name:    "no final newline is recorded",
			in:      "127.0.0.1 localhost",
			entries: istiod("10.0.0.7"),
			want: "127.0.0.1 localhost\n" + beginMarker + addedNewline + "\n" +
				"10.0.0.7\tistiod.istio-system.svc\n" + endMarker + "\n",
		},
		{
			name:    "crlf file gets a crlf block",
			in:      "127.0.0.1 localhost\r\n",
			entries: istiod("10.0.0.7"),
			want:    "127.0.0.1 localhost\r\n" + beginMarker + "\r\n10.0.0.7\tistiod.istio-system.svc\r\n" + endMarker + "\r\n",
		},
		{
			name: "existing block replaced in place",
			in: "127.0.0.1 localhost\n" + beginMarker + "\n10.0.0.1\told.example\n" + endMarker + "\n" +
				"10.9.9.9 added.after.us\n",
			entries: istiod("10.0.0.7"),
			want: "127.0.0.1 localhost\n" + beginMarker + "\n10.0.0.7\tistiod.istio-system.svc\n" + endMarker + "\n" +
				"10.9.9.9 added.after.us\n",
		},
		{
			name: "zero entries remove the block",
			in:   ubuntuHosts + beginMarker + "\n10.0.0.1\told.example\n" + endMarker + "\n",
			want: ubuntuHosts,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Merge([]byte(tt.in), tt.entries)
			if err != nil {
				t.Fatalf("Merge: got error %v, want nil", err)
			}
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("Merge (-want +got):\n%s", diff)
			}
			if again, err := Merge(got, tt.entries); err != nil || string(again) != string(got) {
				t.Errorf("Merge twice: got %q, %v, want %q, nil", again, err, got)
			}
			entries, err := Entries(got)
			if err != nil {
				t.Fatalf("Entries: got error %v, want nil", err)
			}
			if diff := cmp.Diff(tt.entries, entries, addrComparer); diff != "" {
				t.Errorf("Entries (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRemoveRestoresOriginal(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"ubuntu", ubuntuHosts},
		{"no final newline", "127.0.0.1 localhost"},
		{"crlf", "127.0.0.1 localhost\r\n::1 localhost\r\n"},
		{"crlf without final newline", "127.0.0.1 localhost\r\n::1 localhost"},
		{"ends with a lone carriage return", "127.0.0.1 localhost\r"},
		{"only a newline", "\n"},
		{"blank lines at the end", "127.0.0.1 localhost\n\n\n"},
		{"marker-like text mid-line", "127.0.0.1 x # BEGIN meshvm managed block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			merged, err := Merge([]byte(tt.in), istiod("10.0.0.7"))
			if err != nil {
				t.Fatalf("Merge: got error %v, want nil", err)
			}
			if got := string(Remove(merged)); got != tt.in {
				t.Errorf("Remove(Merge(x)): got %q, want %q", got, tt.in)
			}
			if got := string(Remove([]byte(tt.in))); got != tt.in {
				t.Errorf("Remove(x) without a block: got %q, want %q", got, tt.in)
			}
		})
	}
}

// A block the user no longer ends the file with keeps the newline Merge
// added: it now separates the user's own lines.
func TestRemoveKeepsNewlineBeforeLaterLines(t *testing.T) {
	merged, err := Merge([]byte("127.0.0.1 localhost"), istiod("10.0.0.7"))
	if err != nil {
		t.Fatal(err)
	}
	edited := string(merged) + "10.1.1.1 mine\n"
	want := "127.0.0.1 localhost\n10.1.1.1 mine\n"
	if got := string(Remove([]byte(edited))); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestMergeRefusesBrokenMarkers(t *testing.T) {
	block := beginMarker + "\n10.0.0.1\ta.example\n" + endMarker + "\n"
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{"begin without end", "127.0.0.1 localhost\n" + beginMarker + "\n10.0.0.1 a\n10.9.9.9 user.line\n", "never ends"},
		{"end without begin", "127.0.0.1 localhost\n" + endMarker + "\n", "never begun"},
		{"two blocks", block + "10.9.9.9 user.line\n" + block, "2 meshvm managed blocks"},
		{"nested begin", beginMarker + "\n" + block, "inside the one opened on line 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, entries := range [][]Entry{istiod("10.0.0.7"), nil} {
				_, err := Merge([]byte(tt.in), entries)
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("Merge with %d entries: got error %v, want one containing %q", len(entries), err, tt.wantErr)
				}
			}
			if _, err := Entries([]byte(tt.in)); err == nil {
				t.Errorf("Entries: got no error, want one")
			}
		})
	}
}

func TestRemoveLeavesBrokenMarkersAlone(t *testing.T) {
	in := "127.0.0.1 localhost\n" + beginMarker + "\n10.9.9.9 user.line\n"
	if got := string(Remove([]byte(in))); got != in {
		t.Errorf("got %q, want %q", got, in)
	}
}

func TestMergeValidates(t *testing.T) {
	tests := []struct {
		name    string
		entry   Entry
		wantErr string
	}{
		{"no IP", Entry{Names: []string{"a.example"}}, "no IP address"},
		{"no names", Entry{IP: netip.MustParseAddr("10.0.0.1")}, "no host names"},
		{"empty name", Entry{IP: netip.MustParseAddr("10.0.0.1"), Names: []string{""}}, "empty host name"},
		{"space in name", Entry{IP: netip.MustParseAddr("10.0.0.1"), Names: []string{"a b"}}, `contains ' '`},
		{"underscore", Entry{IP: netip.MustParseAddr("10.0.0.1"), Names: []string{"a_b.example"}}, `contains '_'`},
		{"trailing dot", Entry{IP: netip.MustParseAddr("10.0.0.1"), Names: []string{"istiod.istio-system.svc."}}, "without the trailing dot"},
		{"double dot", Entry{IP: netip.MustParseAddr("10.0.0.1"), Names: []string{"a..b"}}, "empty label"},
		{"leading hyphen", Entry{IP: netip.MustParseAddr("10.0.0.1"), Names: []string{"-a.example"}}, "starts or ends with '-'"},
		{"long label", Entry{IP: netip.MustParseAddr("10.0.0.1"), Names: []string{strings.Repeat("a", 64)}}, "longer than 63"},
		{"long name", Entry{IP: netip.MustParseAddr("10.0.0.1"), Names: []string{strings.Repeat("a.", 127) + "ab"}}, "limit is 253"},
		{"cloud metadata", Entry{IP: netip.MustParseAddr("169.254.169.254"), Names: []string{"istiod.istio-system.svc"}}, "cloud's metadata address"},
		{"alibaba metadata", Entry{IP: netip.MustParseAddr("100.100.100.200"), Names: []string{"istiod.istio-system.svc"}}, "cloud's metadata address"},
		{"aws ipv6 metadata", Entry{IP: netip.MustParseAddr("fd00:ec2::254"), Names: []string{"istiod.istio-system.svc"}}, "cloud's metadata address"},
		{"zone with space", Entry{IP: netip.MustParseAddr("fe80::1").WithZone("eth 0"), Names: []string{"a"}}, "cannot be written"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entries := []Entry{{IP: netip.MustParseAddr("10.0.0.7"), Names: []string{"ok.example"}}, tt.entry}
			_, err := Merge([]byte(ubuntuHosts), entries)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "hosts entry 2") {
				t.Errorf("got error %v, want one naming hosts entry 2 and containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestMergeAccepts(t *testing.T) {
	tests := []struct {
		name  string
		entry Entry
	}{
		{"istiod service name", Entry{IP: netip.MustParseAddr("10.0.0.7"), Names: []string{"istiod.istio-system.svc"}}},
		{"revisioned istiod", Entry{IP: netip.MustParseAddr("10.0.0.7"), Names: []string{"istiod-1-31.istio-system.svc"}}},
		{"digit-led label", Entry{IP: netip.MustParseAddr("10.0.0.7"), Names: []string{"1a.example"}}},
		{"ipv6 with zone", Entry{IP: netip.MustParseAddr("fe80::1%eth0"), Names: []string{"peer"}}},
		{"63-byte label", Entry{IP: netip.MustParseAddr("10.0.0.7"), Names: []string{strings.Repeat("a", 63)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Merge(nil, []Entry{tt.entry})
			if err != nil {
				t.Fatalf("got error %v, want nil", err)
			}
			entries, err := Entries(got)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]Entry{tt.entry}, entries, addrComparer); diff != "" {
				t.Errorf("Entries (-want +got):\n%s", diff)
			}
		})
	}
}

func TestMergeReplacesWithOtherEntries(t *testing.T) {
	for _, in := range []string{"", ubuntuHosts, "127.0.0.1 localhost", "a\r\nb"} {
		first, err := Merge([]byte(in), istiod("10.0.0.7"))
		if err != nil {
			t.Fatal(err)
		}
		second, err := Merge(first, istiod("10.0.0.8"))
		if err != nil {
			t.Fatal(err)
		}
		direct, err := Merge([]byte(in), istiod("10.0.0.8"))
		if err != nil {
			t.Fatal(err)
		}
		if string(second) != string(direct) {
			t.Errorf("%q: Merge(Merge(x, e1), e2): got %q, want Merge(x, e2) = %q", in, second, direct)
		}
	}
}

func TestEntries(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []Entry
		wantErr string
	}{
		{name: "no block", in: ubuntuHosts, want: nil},
		{
			name: "hand-edited block with comments and spaces",
			in:   beginMarker + "\r\n# a note\r\n10.0.0.7   istiod.istio-system.svc  # trailing\r\n\r\n" + endMarker + "\r\n",
			want: istiod("10.0.0.7"),
		},
		{name: "bad address in block", in: beginMarker + "\nnot-an-ip a\n" + endMarker + "\n", wantErr: `"not-an-ip" is not an IP address`},
		{name: "address without names", in: beginMarker + "\n10.0.0.7\n" + endMarker + "\n", wantErr: "has no host names"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Entries([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want nil", err)
			}
			if diff := cmp.Diff(tt.want, got, addrComparer); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestShadowed(t *testing.T) {
	ours := []Entry{{IP: netip.MustParseAddr("10.0.0.7"), Names: []string{"istiod.istio-system.svc", "istiod"}}}
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{name: "nothing shadows", in: ubuntuHosts, want: nil},
		{
			name: "earlier line with another address",
			in:   "127.0.0.1 localhost\n10.1.1.1 ISTIOD.istio-system.svc # old\n",
			want: []string{"istiod.istio-system.svc: line 2 of the hosts file maps it to 10.1.1.1 before the meshvm block's 10.0.0.7; remove that line or make it say 10.0.0.7"},
		},
		{name: "earlier line with the same address", in: "10.0.0.7 istiod\n", want: nil},
		{
			name: "first match wins",
			in:   "10.0.0.7 istiod\n10.1.1.1 istiod\n",
			want: nil,
		},
		{
			name: "lines after the block do not shadow",
			in:   beginMarker + "\n10.0.0.7\tistiod\n" + endMarker + "\n10.1.1.1 istiod\n",
			want: nil,
		},
		{
			name: "line before the block shadows",
			in:   "10.1.1.1 istiod\n" + beginMarker + "\n10.0.0.7\tistiod\n" + endMarker + "\n",
			want: []string{"istiod: line 1 of the hosts file maps it to 10.1.1.1 before the meshvm block's 10.0.0.7; remove that line or make it say 10.0.0.7"},
		},
		{name: "comment mentioning the name", in: "# 10.1.1.1 istiod\n", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Shadowed([]byte(tt.in), ours)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// The caller's round trip: read a real file, merge, write, read, remove.
func TestFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hosts")
	if err := os.WriteFile(path, []byte(ubuntuHosts), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, step := range []func([]byte) ([]byte, error){
		func(b []byte) ([]byte, error) { return Merge(b, istiod("10.0.0.7")) },
		func(b []byte) ([]byte, error) { return Remove(b), nil },
	} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out, err := step(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != ubuntuHosts {
		t.Errorf("got %q, want %q", got, ubuntuHosts)
	}
}
