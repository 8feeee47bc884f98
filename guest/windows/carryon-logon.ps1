<#
.SYNOPSIS
  carryon logon script for a Windows guest: points the user's profile folders at the persona share
  and applies the registry changes the laptop prepared (values set, values and keys deleted).

.DESCRIPTION
  The laptop shares the desktop's persona folder with the VM (QEMU: -netdev user,smb=PERSONA_DIR
  runs Samba, seen in the guest as \\10.0.2.4\qemu). It holds:
    profile\                 the profile files (Documents, Desktop, ...)
    registry-changes.reg     what turns the guest's HKEY_CURRENT_USER, as it was at the last logoff,
                             into the persona's: written on the laptop by
                             carryon persona reg export NAME registry-changes.reg --changes-since registry-logoff.reg
  This script
    1. waits for the share (the network comes up after logon starts),
    2. redirects the profile folders listed in -Folders to profile\<folder> on the share (the User
       Shell Folders values: Explorer and applications read them at their next start),
    3. imports registry-changes.reg with reg.exe (only changed values; "name"=- and [-Key] lines
       delete), then renames it to registry-changes.applied.reg so it is applied once.
  Run it at logon: Group Policy (User Configuration > Windows Settings > Scripts > Logon:
  powershell.exe -NoProfile -ExecutionPolicy Bypass -File C:\carryon\carryon-logon.ps1), or a
  scheduled task "At log on". It writes what it did to carryon\logon.log on the share.
  Nothing here was run on Windows by carryon's tests (no Windows on the test machine): see
  docs/hypervisors.md#windows-guests.
#>
[CmdletBinding()]
param(
  [string]$Share = '\\10.0.2.4\qemu',
  [string[]]$Folders = @('Desktop', 'Documents', 'Pictures', 'Music', 'Videos', 'Favorites'),
  [int]$WaitSeconds = 120
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3

# The User Shell Folders value name for each profile folder (Windows' own names, not the folder's).
$ShellFolderNames = @{
  'Desktop'   = 'Desktop'
  'Documents' = 'Personal'
  'Pictures'  = 'My Pictures'
  'Music'     = 'My Music'
  'Videos'    = 'My Video'
  'Favorites' = 'Favorites'
  'Downloads' = '{374DE290-123F-4565-9164-39C4925E467B}'
}
$UserShellFolders = 'HKCU:\Software\Microsoft\Windows\CurrentVersion\Explorer\User Shell Folders'

$logDir = Join-Path $Share 'carryon'
function Write-Log([string]$Message) {
  $line = '{0} {1} {2}' -f (Get-Date -Format 's'), $env:USERNAME, $Message
  try { Add-Content -Path (Join-Path $logDir 'logon.log') -Value $line -Encoding UTF8 } catch { Write-Warning $line }
}

# 1. The share: SMB over QEMU's user network answers once the guest's network is up.
$deadline = (Get-Date).AddSeconds($WaitSeconds)
while (-not (Test-Path -LiteralPath $Share)) {
  if ((Get-Date) -gt $deadline) { Write-Warning "carryon: $Share not reachable after $WaitSeconds s; profile and registry left as they are"; exit 1 }
  Start-Sleep -Seconds 2
}
if (-not (Test-Path -LiteralPath $logDir)) { New-Item -ItemType Directory -Path $logDir | Out-Null }

# 2. Profile folders on the share.
$profileRoot = Join-Path $Share 'profile'
foreach ($folder in $Folders) {
  $name = $ShellFolderNames[$folder]
  if (-not $name) { Write-Log "unknown profile folder '$folder' skipped (known: $($ShellFolderNames.Keys -join ', '))"; continue }
  $target = Join-Path $profileRoot $folder
  if (-not (Test-Path -LiteralPath $target)) { New-Item -ItemType Directory -Path $target | Out-Null }
  Set-ItemProperty -Path $UserShellFolders -Name $name -Value $target -Type ExpandString
  Write-Log "redirected $folder to $target"
}

# 3. Registry changes prepared by the laptop: reg.exe applies deletions as regedit does.
$changes = Join-Path $Share 'registry-changes.reg'
if (Test-Path -LiteralPath $changes) {
  $local = Join-Path $env:TEMP 'carryon-registry-changes.reg'
  Copy-Item -LiteralPath $changes -Destination $local -Force
  & reg.exe import $local 2>&1 | ForEach-Object { Write-Log "reg import: $_" }
  if ($LASTEXITCODE -ne 0) { Write-Log "reg import failed (exit $LASTEXITCODE): registry-changes.reg kept for the next logon"; exit 2 }
  Move-Item -LiteralPath $changes -Destination (Join-Path $Share 'registry-changes.applied.reg') -Force
  Remove-Item -LiteralPath $local -Force
  Write-Log 'registry changes applied'
} else {
  Write-Log 'no registry-changes.reg: registry left as it is'
}
exit 0
