package capture

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Table is one table of iptables-save output: each chain's rules in order.
type Table map[string][]Rule

// Ruleset is the tables of one iptables-save run, by name ("nat", "raw").
type Ruleset map[string]Table

// Rule is one "-A CHAIN ..." line, parsed into the matches the evaluator
// knows. Unknown names what it does not know; such a rule never matches in
// evaluation, and the verdict says so rather than guessing.
type Rule struct {
	Line    string
	matches []match
	// Target is the -j or -g target; ToPorts the REDIRECT port.
	Target  string
	Goto    bool
	ToPorts int
	Unknown string
}

type match struct {
	neg  bool
	kind string // proto, src, dst, in, out, dport, sport, dports, sports, uid, gid
	val  string
}

// ParseSave reads iptables-save output: "*table" starts a table, ":CHAIN"
// declares a chain, "-A CHAIN ..." appends a rule, "COMMIT" ends the table.
func ParseSave(save []byte) (Ruleset, error) {
	rs := Ruleset{}
	var cur Table
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || line == "COMMIT":
		case strings.HasPrefix(line, "*"):
			name := strings.TrimSpace(line[1:])
			if rs[name] == nil {
				rs[name] = Table{}
			}
			cur = rs[name]
		case strings.HasPrefix(line, ":"):
			if cur == nil {
				return nil, fmt.Errorf("line %d: chain outside a table: %q", n, line)
			}
			chain, _, _ := strings.Cut(line[1:], " ")
			if _, ok := cur[chain]; !ok {
				cur[chain] = nil
			}
		case strings.HasPrefix(line, "-A "):
			if cur == nil {
				return nil, fmt.Errorf("line %d: rule outside a table: %q", n, line)
			}
			chain, r := parseRule(line)
			cur[chain] = append(cur[chain], r)
		default:
			return nil, fmt.Errorf("line %d: not iptables-save output: %q", n, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read iptables-save output: %w", err)
	}
	return rs, nil
}

// parseRule parses "-A CHAIN opts...". iptables-save quotes only comments,
// which this reads as one word each.
func parseRule(line string) (string, Rule) {
	words := splitWords(line)
	r := Rule{Line: line}
	chain := ""
	if len(words) > 1 {
		chain = words[1]
	}
	neg := false
	var unknown []string
	for i := 2; i < len(words); i++ {
		w := words[i]
		arg := func() string {
			if i+1 < len(words) {
				i++
				return words[i]
			}
			return ""
		}
		add := func(kind string) { r.matches = append(r.matches, match{neg, kind, arg()}) }
		switch w {
		case "!":
			neg = true
			continue
		case "-p", "--protocol":
			add("proto")
		case "-s", "--source":
			add("src")
		case "-d", "--destination":
			add("dst")
		case "-i", "--in-interface":
			add("in")
		case "-o", "--out-interface":
			add("out")
		case "--dport", "--destination-port":
			add("dport")
		case "--sport", "--source-port":
			add("sport")
		case "--dports", "--destination-ports":
			add("dports")
		case "--sports", "--source-ports":
			add("sports")
		case "--uid-owner":
			add("uid")
		case "--gid-owner":
			add("gid")
		case "-m", "--match":
			// The module name; its options follow and are read above.
			if m := arg(); !knownModules[m] {
				unknown = append(unknown, "-m "+m)
			}
		case "-j", "--jump":
			r.Target = arg()
		case "-g", "--goto":
			r.Target, r.Goto = arg(), true
		case "--to-ports", "--to-port":
			p, _, _ := strings.Cut(arg(), "-")
			r.ToPorts, _ = strconv.Atoi(p)
		case "--comment":
			arg()
		default:
			if strings.HasPrefix(w, "-") {
				unknown = append(unknown, w)
			}
		}
		neg = false
	}
	r.Unknown = strings.Join(unknown, " ")
	return chain, r
}

var knownModules = map[string]bool{"tcp": true, "udp": true, "multiport": true, "owner": true, "comment": true}

func splitWords(line string) []string {
	var out []string
	for len(line) > 0 {
		line = strings.TrimLeft(line, " ")
		if line == "" {
			break
		}
		if line[0] == '"' {
			end := strings.IndexByte(line[1:], '"')
			if end < 0 {
				out = append(out, line[1:])
				break
			}
			out = append(out, line[1:end+1])
			line = line[end+2:]
			continue
		}
		w, rest, _ := strings.Cut(line, " ")
		out = append(out, w)
		line = rest
	}
	return out
}

// Packet is what evaluation sends through the nat table.
type Packet struct {
	Proto    string // "tcp" or "udp"
	Src, Dst netip.Addr
	SPort    int
	DPort    int
	// In is the receiving interface (PREROUTING), Out the sending one (OUTPUT).
	In, Out string
	// UID and GID own a locally generated packet; -1 for one received.
	UID, GID int
}

// Outcome is where the nat table sends a packet: RedirectPort is the
// REDIRECT target (0 when none), Rule the rule that decided, Unknown the
// rules on the way the evaluator could not read.
type Outcome struct {
	RedirectPort int
	Target       string
	Rule         string
	Unknown      []string
}

// maxDepth bounds chain jumps (iptables refuses loops; this guards a
// malformed dump).
const maxDepth = 32

// Eval runs p through chain ("PREROUTING" for a received packet, "OUTPUT"
// for a locally generated one) of the nat table, as the kernel would for
// the first packet of a connection.
func (t Table) Eval(chain string, p Packet) Outcome {
	var out Outcome
	t.walk(chain, p, &out, 0)
	if out.Target == "" {
		out.Target = "ACCEPT"
	}
	return out
}

// walk returns true when a terminal verdict was reached.
func (t Table) walk(chain string, p Packet, out *Outcome, depth int) bool {
	if depth > maxDepth {
		out.Unknown = append(out.Unknown, "chain jumps deeper than "+strconv.Itoa(maxDepth)+" at "+chain)
		return true
	}
	for _, r := range t[chain] {
		if r.Unknown != "" {
			if r.Target != "" {
				out.Unknown = append(out.Unknown, r.Line)
			}
			continue
		}
		if !r.matchesPacket(p) {
			continue
		}
		switch r.Target {
		case "":
			continue // a counting rule
		case "RETURN":
			return false
		case "ACCEPT", "DROP", "DNAT", "SNAT", "MASQUERADE":
			out.Target, out.Rule = r.Target, r.Line
			return true
		case "REDIRECT":
			out.Target, out.Rule, out.RedirectPort = r.Target, r.Line, r.ToPorts
			return true
		default:
			if _, ok := t[r.Target]; !ok {
				out.Unknown = append(out.Unknown, r.Line)
				continue
			}
			if t.walk(r.Target, p, out, depth+1) || r.Goto {
				return true
			}
		}
	}
	return false
}

func (r Rule) matchesPacket(p Packet) bool {
	for _, m := range r.matches {
		if m.test(p) == m.neg {
			return false
		}
	}
	return true
}

func (m match) test(p Packet) bool {
	switch m.kind {
	case "proto":
		return m.val == "all" || m.val == p.Proto
	case "src":
		return inPrefix(m.val, p.Src)
	case "dst":
		return inPrefix(m.val, p.Dst)
	case "in":
		return ifaceMatch(m.val, p.In)
	case "out":
		return ifaceMatch(m.val, p.Out)
	case "dport":
		return portIn(m.val, p.DPort)
	case "sport":
		return portIn(m.val, p.SPort)
	case "dports":
		return portList(m.val, p.DPort)
	case "sports":
		return portList(m.val, p.SPort)
	case "uid":
		return p.UID >= 0 && portIn(strings.ReplaceAll(m.val, "-", ":"), p.UID)
	case "gid":
		return p.GID >= 0 && portIn(strings.ReplaceAll(m.val, "-", ":"), p.GID)
	}
	return false
}

func inPrefix(s string, a netip.Addr) bool {
	if !strings.Contains(s, "/") {
		s += "/32"
		if strings.Contains(s, ":") {
			s = strings.TrimSuffix(s, "/32") + "/128"
		}
	}
	pfx, err := netip.ParsePrefix(s)
	return err == nil && pfx.Contains(a)
}

func ifaceMatch(pattern, name string) bool {
	if p, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(name, p)
	}
	return pattern == name
}

// portIn reads "N" or "A:B".
func portIn(s string, n int) bool {
	lo, hi, rng := strings.Cut(s, ":")
	a, err := strconv.Atoi(lo)
	if err != nil {
		return false
	}
	if !rng {
		return n == a
	}
	b, err := strconv.Atoi(hi)
	return err == nil && a <= n && n <= b
}

func portList(s string, n int) bool {
	for _, p := range strings.Split(s, ",") {
		if portIn(p, n) {
			return true
		}
	}
	return false
}

// IstioChains lists the ISTIO_ chains the ruleset declares, as "table/CHAIN".
func (rs Ruleset) IstioChains() []string {
	var out []string
	for tn, t := range rs {
		for c := range t {
			if strings.HasPrefix(c, "ISTIO_") {
				out = append(out, tn+"/"+c)
			}
		}
	}
	return out
}
