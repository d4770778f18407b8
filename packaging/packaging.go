// Package packaging holds how vmagent is installed on a VM: its systemd unit
// and default config, shipped in the .deb/.rpm and embedded in hostctl,
// which installs the same files on machines it onboards directly.
package packaging

import _ "embed"

// Unit is vmagent's systemd unit (/etc/systemd/system/vmagent.service when
// hostctl installs it, /lib/systemd/system in the packages).
//
//go:embed vmagent.service
var Unit []byte

// Config is the default /etc/meshvm/vmagent.yaml.
//
//go:embed vmagent.yaml
var Config []byte
