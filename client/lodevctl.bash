# SPDX-License-Identifier: MIT
# bash completion for lodevctl(1): commands, each command's options, and the ids
# of the transfers the running lodevd holds (asked from lodevctl itself).

# Transfer ids, the first column of "lodevctl transfers --no-legend"; nothing
# when lodevd is not reachable, and never more than a few seconds of waiting.
_lodevctl_transfer_ids() {
        local id rest
        timeout 5 "$1" transfers --no-legend 2>/dev/null |
                while read -r id rest; do
                        printf '%s\n' "$id"
                done
}

_lodevctl() {
        local cur prev words cword split
        _init_completion -s || return

        local commands='status provision observe upload transfers cancel monitor wait-online jobs inhibit-reboot'
        local global='--json --no-legend --no-pager --help --version'
        local -A own=(
                [provision]='--force'
                [observe]='--code --code-system --code-display --value --unit --patient-id'
                [upload]='--name --content-type --wait'
                [wait-online]='--timeout'
                [jobs]='--check'
                [inhibit-reboot]='--who --why'
        )

        # The command and how many arguments it has so far; options (and the value
        # of those that take one) may stand anywhere.
        local i verb='' nargs=0 only_args=''
        for ((i = 1; i < cword; i++)); do
                if [[ -z $only_args ]]; then
                        case ${words[i]} in
                        --)
                                only_args=1
                                continue
                                ;;
                        --code | --code-system | --code-display | --value | --unit | --patient-id | \
                                --name | --content-type | --timeout | -t | --who | --why)
                                ((i++))
                                continue
                                ;;
                        -*)
                                continue
                                ;;
                        esac
                fi
                if [[ -z $verb ]]; then
                        verb=${words[i]}
                        continue
                fi
                ((nargs++))
                # What follows inhibit-reboot's COMMAND is COMMAND's own.
                if [[ $verb == inhibit-reboot ]]; then
                        _command_offset "$i"
                        return
                fi
        done

        case $prev in
        --json)
                if $split; then
                        COMPREPLY=($(compgen -W 'pretty short off' -- "$cur"))
                        return
                fi
                ;;
        --content-type)
                [[ -r /etc/mime.types ]] &&
                        COMPREPLY=($(compgen -W "$(awk '!/^#/ && NF > 0 { print $1 }' /etc/mime.types)" -- "$cur"))
                return
                ;;
        --code | --code-system | --code-display | --value | --unit | --patient-id | --name | \
                --timeout | -t | --who | --why)
                return
                ;;
        esac
        $split && return

        if [[ $cur == -* && -z $only_args ]]; then
                COMPREPLY=($(compgen -W "$global ${own[$verb]-}" -- "$cur"))
                return
        fi
        if [[ -z $verb ]]; then
                COMPREPLY=($(compgen -W "$commands" -- "$cur"))
                return
        fi
        if ((nargs > 0)); then
                return
        fi
        case $verb in
        upload)
                _filedir
                ;;
        cancel)
                COMPREPLY=($(compgen -W "$(_lodevctl_transfer_ids "${words[0]}")" -- "$cur"))
                ;;
        inhibit-reboot)
                COMPREPLY=($(compgen -c -- "$cur"))
                ;;
        esac
} && complete -F _lodevctl lodevctl
