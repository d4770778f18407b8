package netcheck

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/meshvm/meshvm/vmagent/internal/capbuf"
)

// istioChainPrefix starts every chain `pilot-agent istio-iptables` creates
// (ISTIO_INBOUND, ISTIO_OUTPUT, ISTIO_REDIRECT, ISTIO_IN_REDIRECT,
// ISTIO_DIVERT, ISTIO_TPROXY, ISTIO_OUTPUT_DNS, ...) in nat, mangle and raw.
const istioChainPrefix = "ISTIO_"

// istioTablePrefix starts every table istio-iptables --native-nftables
// creates (istio-proxy-nat, istio-proxy-mangle, istio-proxy-raw).
const istioTablePrefix = "istio-proxy-"

// toolWaitDelay bounds how long a killed tool may hold its output pipes.
const toolWaitDelay = 2 * time.Second

// tools finds and runs the firewall binaries.
type tools struct {
	dirs []string
}

func newTools(searchPath []string) tools {
	if len(searchPath) > 0 {
		return tools{dirs: searchPath}
	}
	dirs := filepath.SplitList(os.Getenv("PATH"))
	for _, d := range []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"} {
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return tools{dirs: dirs}
}

// errNoTool marks a binary that is not installed.
var errNoTool = errors.New("not installed")

func (t tools) lookPath(name string) (string, error) {
	for _, d := range t.dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: %w (searched %s)", name, errNoTool, strings.Join(t.dirs, ":"))
}

// run runs a tool with the C locale and returns its stdout. A failure
// carries the tool's stderr.
func (t tools) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	path, err := t.lookPath(name)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.WaitDelay = toolWaitDelay
	stdout, stderr := capbuf.New(maxToolOutput), capbuf.New(maxToolError)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return nil, fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
		}
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, firstLine(msg))
	}
	if stdout.Truncated() {
		return nil, fmt.Errorf("%s %s: its output is over %d MiB: too large to check", name, strings.Join(args, " "), maxToolOutput>>20)
	}
	return stdout.Bytes(), nil
}

// A ruleset of tens of thousands of rules fits; more is not read.
const (
	maxToolOutput = 32 << 20
	maxToolError  = 64 << 10
)

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func firewallBackends(ctx context.Context, t tools) []Backend {
	return []Backend{
		iptablesBackend(ctx, t, BackendLegacy, "iptables-legacy-save", "ip6tables-legacy-save",
			"the iptables package (Debian, Ubuntu) or iptables-legacy (Fedora, RHEL)"),
		iptablesBackend(ctx, t, BackendIptablesNFT, "iptables-nft-save", "ip6tables-nft-save",
			"the iptables package (Debian, Ubuntu) or iptables-nft (Fedora, RHEL)"),
		nftBackend(ctx, t),
	}
}

func iptablesBackend(ctx context.Context, t tools, name, save4, save6, pkg string) Backend {
	b := Backend{Name: name}
	out, err := t.run(ctx, save4)
	if errors.Is(err, errNoTool) {
		b.Err = fmt.Sprintf("%v: install %s", err, pkg)
		return b
	}
	if err != nil {
		b.Err = err.Error()
		return b
	}
	b.Available = true
	b.IstioChains = istioIptablesChains(out, "")

	out, err = t.run(ctx, save6)
	switch {
	case errors.Is(err, errNoTool):
		b.Err = fmt.Sprintf("%v: IPv6 rules were not checked; install %s", err, pkg)
	case err != nil:
		b.Err = "IPv6: " + err.Error()
	default:
		b.IstioChains = append(b.IstioChains, istioIptablesChains(out, "ip6:")...)
	}
	slices.Sort(b.IstioChains)
	return b
}

// istioIptablesChains returns "table/CHAIN" for each Istio chain declared
// in iptables-save output ("*nat" starts a table, ":CHAIN POLICY [p:b]"
// declares a chain).
func istioIptablesChains(save []byte, prefix string) []string {
	var (
		out   []string
		table string
	)
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			table = strings.TrimSpace(line[1:])
		case strings.HasPrefix(line, ":"):
			chain, _, _ := strings.Cut(line[1:], " ")
			if strings.HasPrefix(chain, istioChainPrefix) {
				out = append(out, prefix+table+"/"+chain)
			}
		}
	}
	return out
}

func nftBackend(ctx context.Context, t tools) Backend {
	b := Backend{Name: BackendNFT}
	out, err := t.run(ctx, "nft", "-j", "list", "tables")
	if errors.Is(err, errNoTool) {
		b.Err = fmt.Sprintf("%v: install the nftables package", err)
		return b
	}
	if err != nil {
		b.Err = err.Error()
		return b
	}
	tables, err := parseNFT(out)
	if err != nil {
		b.Err = fmt.Sprintf("read `nft -j list tables`: %v", err)
		return b
	}
	b.Available = true
	var errs []string
	for _, tb := range tables {
		if tb.Table == nil || !strings.HasPrefix(tb.Table.Name, istioTablePrefix) {
			continue
		}
		id := tb.Table.Family + " " + tb.Table.Name
		out, err := t.run(ctx, "nft", "-j", "list", "table", tb.Table.Family, tb.Table.Name)
		if err != nil {
			errs = append(errs, err.Error())
			b.IstioChains = append(b.IstioChains, id)
			continue
		}
		objs, err := parseNFT(out)
		if err != nil {
			errs = append(errs, fmt.Sprintf("read `nft -j list table %s`: %v", id, err))
			b.IstioChains = append(b.IstioChains, id)
			continue
		}
		n := len(b.IstioChains)
		for _, o := range objs {
			if o.Chain != nil {
				b.IstioChains = append(b.IstioChains, id+"/"+o.Chain.Name)
			}
		}
		if len(b.IstioChains) == n {
			b.IstioChains = append(b.IstioChains, id) // an empty table is a leftover too
		}
	}
	slices.Sort(b.IstioChains)
	b.Err = joinNonEmpty(errs...)
	return b
}

// nftObject is one element of nft's JSON output (libnftables-json(5)).
type nftObject struct {
	Table *struct {
		Family string `json:"family"`
		Name   string `json:"name"`
	} `json:"table"`
	Chain *struct {
		Family string `json:"family"`
		Table  string `json:"table"`
		Name   string `json:"name"`
	} `json:"chain"`
}

func parseNFT(out []byte) ([]nftObject, error) {
	var doc struct {
		Nftables []nftObject `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, err
	}
	return doc.Nftables, nil
}
