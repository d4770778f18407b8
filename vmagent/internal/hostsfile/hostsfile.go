// Package hostsfile keeps one marked block of entries in /etc/hosts content.
//
// The functions work on bytes and leave file I/O to the caller (pkg/fsroot
// writes it atomically). Everything outside the block is the user's and is
// kept byte for byte, so that Remove(Merge(x, e)) gives back x exactly:
// the block always starts on a line of its own, and when the file did not
// end with a newline the BEGIN marker records that Merge added one, so
// Remove can take it away again.
package hostsfile

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/meshvm/meshvm/pkg/agentspec"
)

const (
	beginMarker = "# BEGIN meshvm managed block: do not edit, vmagent rewrites it"
	endMarker   = "# END meshvm managed block"

	// addedNewline is appended to the BEGIN marker when Merge had to end the
	// file's last line before it could start the block.
	addedNewline = " (newline added above)"

	// Lines starting with these are markers even if a user edited the rest.
	beginPrefix = "# BEGIN meshvm managed block"
	endPrefix   = "# END meshvm managed block"
)

// Entry maps one address to its host names, as one /etc/hosts line.
type Entry struct {
	IP    netip.Addr `json:"ip"`
	Names []string   `json:"names"`
}

// block is where the managed block sits in the content.
type block struct {
	start, end   int    // byte offsets: start of the BEGIN line, just past the END line
	eol          string // the BEGIN line's terminator, used for every block line
	addedNewline bool   // BEGIN carries the addedNewline note
}

// Merge returns content with exactly one managed block that holds entries,
// one line each. An existing block is replaced where it is; otherwise the
// block is appended. With no entries the block is removed, as by Remove.
// Content with broken markers (BEGIN without END, two blocks) is an error
// rather than a guess that could eat the user's lines.
func Merge(content []byte, entries []Entry) ([]byte, error) {
	blocks, err := findBlocks(content)
	if err != nil {
		return nil, err
	}
	if len(blocks) > 1 {
		return nil, fmt.Errorf("hosts file has %d meshvm managed blocks: delete all but one (or all of them) and retry", len(blocks))
	}
	if len(entries) == 0 {
		return removeBlocks(content, blocks), nil
	}
	for i, e := range entries {
		if err := e.validate(); err != nil {
			return nil, fmt.Errorf("hosts entry %d (%s): %w", i+1, e, err)
		}
	}

	if len(blocks) == 1 {
		b := blocks[0]
		var out bytes.Buffer
		out.Write(content[:b.start])
		render(&out, entries, b.eol, b.addedNewline)
		out.Write(content[b.end:])
		return out.Bytes(), nil
	}

	eol := detectEOL(content)
	added := len(content) > 0 && content[len(content)-1] != '\n'
	var out bytes.Buffer
	out.Write(content)
	if added {
		out.WriteString(eol)
	}
	render(&out, entries, eol, added)
	return out.Bytes(), nil
}

// Remove returns content without the managed block, undoing the newline
// Merge added before it. Content whose markers do not pair up is returned
// unchanged: Merge reports what is wrong with it.
func Remove(content []byte) []byte {
	blocks, err := findBlocks(content)
	if err != nil {
		return bytes.Clone(content)
	}
	return removeBlocks(content, blocks)
}

// Entries returns the entries the managed block holds now, or none if
// there is no block.
func Entries(content []byte) ([]Entry, error) {
	blocks, err := findBlocks(content)
	if err != nil {
		return nil, err
	}
	if len(blocks) > 1 {
		return nil, fmt.Errorf("hosts file has %d meshvm managed blocks: delete all but one (or all of them) and retry", len(blocks))
	}
	if len(blocks) == 0 {
		return nil, nil
	}
	b := blocks[0]
	var entries []Entry
	for _, l := range splitLines(content[b.start:b.end]) {
		if l.text == "" || isMarker(l.text) {
			continue
		}
		e, ok, err := parseLine(l.text)
		if err != nil {
			return nil, fmt.Errorf("meshvm managed block: %q: %w; remove the block and let vmagent rewrite it", l.text, err)
		}
		if !ok {
			continue
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// Shadowed returns a warning for each name of entries that a line outside
// the managed block, before it, maps to a different address. Resolvers stop
// at the first line that names a host, so such a line wins over the block.
func Shadowed(content []byte, entries []Entry) []string {
	// Only lines above the block count; without a block, Merge appends it
	// at the end, so every line does.
	var lines []line
	for _, l := range splitLines(content) {
		if isMarker(l.text) {
			break
		}
		lines = append(lines, l)
	}

	var warnings []string
	for _, e := range entries {
		for _, name := range e.Names {
			for i, l := range lines {
				other, ok, err := parseLine(l.text)
				if err != nil || !ok || !hasName(other.Names, name) {
					continue
				}
				if other.IP != e.IP {
					warnings = append(warnings, fmt.Sprintf(
						"%s: line %d of the hosts file maps it to %s before the meshvm block's %s; remove that line or make it say %s",
						name, i+1, other.IP, e.IP, e.IP))
				}
				break // the first line that names the host wins
			}
		}
	}
	return warnings
}

func (e Entry) String() string {
	ip := "<no IP>"
	if e.IP.IsValid() {
		ip = e.IP.String()
	}
	return ip + " " + strings.Join(e.Names, " ")
}

func (e Entry) validate() error {
	if !e.IP.IsValid() {
		return errors.New("no IP address: set IP to the address the names should resolve to")
	}
	// A zone is free text in netip; it must survive a write and a re-read.
	if s := e.IP.String(); strings.ContainsAny(s, " \t\r\n#") {
		return fmt.Errorf("IP zone %q cannot be written to a hosts file: use an interface name as the zone", e.IP.Zone())
	} else if back, err := netip.ParseAddr(s); err != nil || back != e.IP {
		return fmt.Errorf("IP %s does not read back as the same address: use a plain IPv4 or IPv6 address", s)
	}
	if agentspec.MetadataAddress(e.IP) {
		return fmt.Errorf("IP %s is a cloud's metadata address (or IPv4 link-local): a hosts entry never sends names there; give the address istiod (or the VM) is reached at", e.IP)
	}
	if len(e.Names) == 0 {
		return errors.New("no host names: give at least one name such as istiod.istio-system.svc")
	}
	for _, n := range e.Names {
		if err := validName(n); err != nil {
			return err
		}
	}
	return nil
}

// validName checks an RFC 1123 host name, written without a trailing dot as
// /etc/hosts expects (e.g. istiod.istio-system.svc).
func validName(n string) error {
	if n == "" {
		return errors.New("empty host name: remove it")
	}
	if len(n) > 253 {
		return fmt.Errorf("host name %.40q... is %d bytes long: the limit is 253", n, len(n))
	}
	if strings.HasSuffix(n, ".") {
		return fmt.Errorf("host name %q ends with a dot: write it without the trailing dot", n)
	}
	for label := range strings.SplitSeq(n, ".") {
		if label == "" {
			return fmt.Errorf("host name %q has an empty label: remove the doubled dot", n)
		}
		if len(label) > 63 {
			return fmt.Errorf("host name %q has a label longer than 63 bytes: shorten it", n)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host name %q has a label that starts or ends with '-': use letters or digits there", n)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("host name %q contains %q: use only letters, digits, '-' and '.'", n, c)
			}
		}
	}
	return nil
}

// render writes the whole block, every line ended by eol.
func render(out *bytes.Buffer, entries []Entry, eol string, added bool) {
	out.WriteString(beginMarker)
	if added {
		out.WriteString(addedNewline)
	}
	out.WriteString(eol)
	for _, e := range entries {
		out.WriteString(e.IP.String())
		out.WriteByte('\t')
		out.WriteString(strings.Join(e.Names, " "))
		out.WriteString(eol)
	}
	out.WriteString(endMarker)
	out.WriteString(eol)
}

// removeBlocks cuts blocks out of content. The newline Merge added is taken
// away only when its block still ends the file: if the user wrote lines
// after it, that newline now separates their lines and must stay.
func removeBlocks(content []byte, blocks []block) []byte {
	var out bytes.Buffer
	prev := 0
	for _, b := range blocks {
		start := b.start
		if b.addedNewline && b.end == len(content) &&
			start-len(b.eol) >= prev && string(content[start-len(b.eol):start]) == b.eol {
			start -= len(b.eol)
		}
		out.Write(content[prev:start])
		prev = b.end
	}
	out.Write(content[prev:])
	return out.Bytes()
}

type line struct {
	text       string // without the terminator or a trailing '\r'
	start, end int    // byte offsets including the terminator
	eol        string // "\n", "\r\n" or "" on a last line without one
}

func splitLines(content []byte) []line {
	var lines []line
	for start := 0; start < len(content); {
		l := line{start: start}
		raw := content[start:]
		if i := bytes.IndexByte(raw, '\n'); i >= 0 {
			raw = raw[:i+1]
			l.eol = "\n"
		}
		l.end = start + len(raw)
		text := strings.TrimSuffix(string(raw), "\n")
		if l.eol != "" && strings.HasSuffix(text, "\r") {
			l.eol = "\r\n"
		}
		l.text = strings.TrimSuffix(text, "\r")
		lines = append(lines, l)
		start = l.end
	}
	return lines
}

func isMarker(text string) bool {
	return strings.HasPrefix(text, beginPrefix) || strings.HasPrefix(text, endPrefix)
}

// findBlocks locates every BEGIN..END pair and refuses markers that do not
// pair up, naming the line so the user can fix it by hand.
func findBlocks(content []byte) ([]block, error) {
	var (
		blocks []block
		open   *block
		openAt int
	)
	for i, l := range splitLines(content) {
		switch {
		case strings.HasPrefix(l.text, beginPrefix):
			if open != nil {
				return nil, fmt.Errorf("hosts file line %d starts a meshvm managed block inside the one opened on line %d: delete the unfinished block's lines and retry", i+1, openAt)
			}
			eol := l.eol
			if eol == "" {
				eol = "\n"
			}
			open = &block{start: l.start, eol: eol, addedNewline: strings.HasSuffix(l.text, addedNewline)}
			openAt = i + 1
		case strings.HasPrefix(l.text, endPrefix):
			if open == nil {
				return nil, fmt.Errorf("hosts file line %d ends a meshvm managed block that was never begun: delete that line and retry", i+1)
			}
			open.end = l.end
			blocks = append(blocks, *open)
			open = nil
		}
	}
	if open != nil {
		return nil, fmt.Errorf("hosts file line %d begins a meshvm managed block that never ends: add %q after its entries or delete the line, then retry", openAt, endMarker)
	}
	return blocks, nil
}

// detectEOL picks the line ending of the file's first line so an appended
// block matches a CRLF file.
func detectEOL(content []byte) string {
	if i := bytes.IndexByte(content, '\n'); i > 0 && content[i-1] == '\r' {
		return "\r\n"
	}
	return "\n"
}

// parseLine reads one hosts line; ok is false for blank and comment lines.
func parseLine(text string) (e Entry, ok bool, err error) {
	if i := strings.IndexByte(text, '#'); i >= 0 {
		text = text[:i]
	}
	fields := strings.Fields(text)
	if len(fields) == 0 {
		return Entry{}, false, nil
	}
	ip, err := netip.ParseAddr(fields[0])
	if err != nil {
		return Entry{}, false, fmt.Errorf("%q is not an IP address", fields[0])
	}
	if len(fields) == 1 {
		return Entry{}, false, fmt.Errorf("address %s has no host names", ip)
	}
	return Entry{IP: ip, Names: fields[1:]}, true, nil
}

func hasName(names []string, name string) bool {
	for _, n := range names {
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}
