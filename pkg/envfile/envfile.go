// Package envfile reads the KEY=value files Istio writes for VMs (cluster.env,
// sidecar.env: shell syntax, values quoted by Istio's shellescape) and writes
// the systemd EnvironmentFile the sidecar unit loads.
//
// It reads the subset of shell that such files use: comments, blank lines,
// an optional "export ", single quotes, double quotes with backslash escapes,
// unquoted words, and $VAR / ${VAR} from variables defined earlier in the
// same files. Anything that would run a command is refused: the agent never
// executes configuration.
package envfile

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

var keyRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Parse reads a file's content into env, which earlier files may have filled
// (later assignments win, as with shell's `set -a; . a; . b`). name is used
// in errors.
func Parse(name string, content []byte, env map[string]string) error {
	for i, line := range strings.Split(string(content), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		key, raw, ok := strings.Cut(line, "=")
		if !ok || !keyRe.MatchString(key) {
			return fmt.Errorf("%s line %d: want KEY=value, got %q", name, i+1, clip(line))
		}
		val, err := unquote(raw, env)
		if err != nil {
			return fmt.Errorf("%s line %d (%s): %w", name, i+1, key, err)
		}
		env[key] = val
	}
	return nil
}

func unquote(s string, env map[string]string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return "", fmt.Errorf("unterminated single quote")
			}
			b.WriteString(s[i+1 : i+1+end])
			i += end + 2
		case c == '"':
			i++
			closed := false
			for i < len(s) {
				switch s[i] {
				case '"':
					closed = true
					i++
				case '\\':
					if i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
						b.WriteByte(s[i+1])
						i += 2
						continue
					}
					b.WriteByte('\\')
					i++
					continue
				case '$':
					n, err := expand(s[i:], env, &b)
					if err != nil {
						return "", err
					}
					i += n
					continue
				case '`':
					return "", fmt.Errorf("command substitution is not supported")
				default:
					b.WriteByte(s[i])
					i++
					continue
				}
				break
			}
			if !closed {
				return "", fmt.Errorf("unterminated double quote")
			}
		case c == '\\':
			if i+1 < len(s) {
				b.WriteByte(s[i+1])
			}
			i += 2
		case c == '$':
			n, err := expand(s[i:], env, &b)
			if err != nil {
				return "", err
			}
			i += n
		case c == '`' || c == ';' || c == '|' || c == '&' || c == '<' || c == '>' || c == '(' || c == ')':
			return "", fmt.Errorf("shell syntax %q is not supported in environment files", string(c))
		case c == ' ' || c == '\t':
			rest := strings.TrimSpace(s[i:])
			if rest == "" || strings.HasPrefix(rest, "#") {
				return b.String(), nil
			}
			return "", fmt.Errorf("unquoted space in value: quote the value")
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), nil
}

// expand writes the value of the $VAR or ${VAR} at the start of s and
// returns how many bytes it consumed.
func expand(s string, env map[string]string, b *strings.Builder) (int, error) {
	if strings.HasPrefix(s, "$(") {
		return 0, fmt.Errorf("command substitution is not supported")
	}
	if strings.HasPrefix(s, "${") {
		end := strings.IndexByte(s, '}')
		if end < 0 {
			return 0, fmt.Errorf("unterminated ${")
		}
		name := s[2:end]
		if !keyRe.MatchString(name) {
			return 0, fmt.Errorf("only plain ${NAME} expansions are supported, got %q", s[:end+1])
		}
		b.WriteString(env[name])
		return end + 1, nil
	}
	n := 1
	for n < len(s) && (s[n] == '_' || s[n] >= 'A' && s[n] <= 'Z' || s[n] >= 'a' && s[n] <= 'z' || n > 1 && s[n] >= '0' && s[n] <= '9') {
		n++
	}
	if n == 1 {
		b.WriteByte('$')
		return 1, nil
	}
	b.WriteString(env[s[1:n]])
	return n, nil
}

// FormatSystemd renders env as a systemd EnvironmentFile, sorted by key.
// Values are single-quoted (literal in systemd) unless they contain a quote.
func FormatSystemd(env map[string]string) ([]byte, error) {
	keys := make([]string, 0, len(env))
	for k := range env {
		if !keyRe.MatchString(k) {
			return nil, fmt.Errorf("environment name %q is not valid", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		v := env[k]
		if strings.ContainsAny(v, "\n\r") {
			return nil, fmt.Errorf("value of %s spans lines: systemd environment files cannot hold it", k)
		}
		if !strings.Contains(v, "'") {
			fmt.Fprintf(&b, "%s='%s'\n", k, v)
			continue
		}
		r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`, "`", "\\`")
		fmt.Fprintf(&b, "%s=\"%s\"\n", k, r.Replace(v))
	}
	return []byte(b.String()), nil
}

func clip(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}
