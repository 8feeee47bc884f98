<#
.SYNOPSIS
  carryon logoff script for a Windows guest: exports the user's registry (HKEY_CURRENT_USER) to the
  persona share, for the laptop to take into the persona.

.DESCRIPTION
  reg.exe export HKCU writes the whole of HKEY_CURRENT_USER as a .reg file (UTF-16LE with a BOM, CRLF,
  "Windows Registry Editor Version 5.00"), the format carryon reads. The export goes to a local temp
  file first and reaches the share as registry-logoff.reg in one rename, so the laptop never reads
  half a file. On the laptop, after the VM is shut down:
    carryon persona reg import NAME PERSONA_DIR/registry-logoff.reg --replace
  makes the persona's registry what the guest had, within the desktop's include/exclude lists (keys
  outside them, such as MRU lists, stay out); the next check-in or push sends only what changed.
  Run it at logoff: Group Policy (User Configuration > Windows Settings > Scripts > Logoff:
  powershell.exe -NoProfile -ExecutionPolicy Bypass -File C:\carryon\carryon-logoff.ps1).
  Profile files need no copy: the logon script pointed the profile folders at the share.
  Nothing here was run on Windows by carryon's tests (no Windows on the test machine): see
  docs/hypervisors.md#windows-guests.
#>
[CmdletBinding()]
param(
  [string]$Share = '\\10.0.2.4\qemu'
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3

$logDir = Join-Path $Share 'carryon'
function Write-Log([string]$Message) {
  $line = '{0} {1} {2}' -f (Get-Date -Format 's'), $env:USERNAME, $Message
  try { Add-Content -Path (Join-Path $logDir 'logoff.log') -Value $line -Encoding UTF8 } catch { Write-Warning $line }
}

if (-not (Test-Path -LiteralPath $Share)) { Write-Warning "carryon: $Share not reachable: the registry was not exported"; exit 1 }
if (-not (Test-Path -LiteralPath $logDir)) { New-Item -ItemType Directory -Path $logDir | Out-Null }

$local = Join-Path $env:TEMP 'carryon-hkcu.reg'
& reg.exe export HKCU $local /y 2>&1 | ForEach-Object { Write-Log "reg export: $_" }
if ($LASTEXITCODE -ne 0) { Write-Log "reg export failed (exit $LASTEXITCODE): registry-logoff.reg left as it was"; exit 2 }

$partial = Join-Path $Share 'registry-logoff.reg.partial'
Copy-Item -LiteralPath $local -Destination $partial -Force
Move-Item -LiteralPath $partial -Destination (Join-Path $Share 'registry-logoff.reg') -Force
Remove-Item -LiteralPath $local -Force
Write-Log ('registry exported ({0} bytes)' -f (Get-Item -LiteralPath (Join-Path $Share 'registry-logoff.reg')).Length)
exit 0
