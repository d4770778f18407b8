// Package config loads vmagent's configuration: defaults < file < flags,
// merged and validated in one place. hostctl writes the file and the TLS
// material at install time; the agent's identity never comes from flags.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"
)

// DefaultPath is where the packaged unit points --config.
const DefaultPath = "/etc/meshvm/vmagent.yaml"

// DefaultPort is the agent's fixed default port.
const DefaultPort = 7443

// Config is version 1 of vmagent.yaml.
type Config struct {
	Version int `json:"version"`
	// Listen is host:port; ":7443" listens on every address.
	Listen string `json:"listen"`
	// Root stands for "/" of the managed machine; tests use a sandbox.
	Root string `json:"root"`
	// AgentPath is this binary's installed path, which the sidecar unit calls.
	AgentPath string `json:"agent_path"`
	TLS       TLS    `json:"tls"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"log_level"`
}

// TLS names the PEM files of the agent's identity and the pinned client CA.
type TLS struct {
	Cert     string `json:"cert"`
	Key      string `json:"key"`
	ClientCA string `json:"client_ca"`
}

// Default returns the built-in configuration.
func Default() Config {
	return Config{
		Version:   1,
		Listen:    fmt.Sprintf(":%d", DefaultPort),
		Root:      "/",
		AgentPath: "/usr/local/bin/vmagent",
		TLS: TLS{
			Cert:     "/etc/meshvm/agent/server.pem",
			Key:      "/etc/meshvm/agent/server-key.pem",
			ClientCA: "/etc/meshvm/agent/client-ca.pem",
		},
		LogLevel: "info",
	}
}

// Overrides are flag values; empty fields leave the file's value.
type Overrides struct {
	Listen, Root, LogLevel string
}

// Load reads path over the defaults (a missing file at the default path is
// fine; a missing file named explicitly is not) and applies flags.
func Load(path string, explicit bool, o Overrides) (Config, error) {
	c := Default()
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !explicit:
	case err != nil:
		return Config{}, fmt.Errorf("read config: %w", err)
	default:
		if err := yaml.UnmarshalStrict(data, &c); err != nil {
			return Config{}, fmt.Errorf("config %s: %w: fix the file (see packaging/vmagent.yaml for every field)", path, err)
		}
	}
	if o.Listen != "" {
		c.Listen = o.Listen
	}
	if o.Root != "" {
		c.Root = o.Root
	}
	if o.LogLevel != "" {
		c.LogLevel = o.LogLevel
	}
	return c, c.validate(path)
}

func (c Config) validate(path string) error {
	if c.Version != 1 {
		return fmt.Errorf("config %s: version %d is not supported: this agent reads version 1", path, c.Version)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("config: listen %q: %v: want host:port such as \":%d\"", c.Listen, err, DefaultPort)
	}
	if !filepath.IsAbs(c.Root) {
		return fmt.Errorf("config: root %q must be an absolute path", c.Root)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	return nil
}

// ReadTLS reads the three PEM files; each error names the file and the fix.
func (c Config) ReadTLS() (cert, key, clientCA []byte, err error) {
	read := func(what, p string) []byte {
		if err != nil {
			return nil
		}
		var b []byte
		if b, err = os.ReadFile(p); err != nil {
			err = fmt.Errorf("agent %s: %w: run \"hostctl vm onboard\" to (re)install the agent's certificates", what, err)
		}
		return b
	}
	cert = read("certificate", c.TLS.Cert)
	key = read("private key", c.TLS.Key)
	clientCA = read("client CA", c.TLS.ClientCA)
	return cert, key, clientCA, err
}
