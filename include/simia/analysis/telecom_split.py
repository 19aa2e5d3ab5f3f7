"""The tau2-bench telecom task splits (v1.0.1 ``split_tasks.json``, MIT licence): the
40 ``test`` tasks the secondary analysis reports on their own, and the split sizes."""

from __future__ import annotations

__all__ = ["SPLIT_SIZES", "TELECOM_TEST_TASKS"]

#: tasks per split (``base`` = ``train`` + ``test``)
SPLIT_SIZES: dict[str, int] = {"base": 114, "train": 74, "test": 40, "small": 20}

#: ``split_tasks.json["test"]``, in its order
TELECOM_TEST_TASKS: tuple[str, ...] = (
    ("[mms_issue]airplane_mode_on|bad_network_preference|bad_wifi_calling|break_apn_mms_settin"
     "g|break_app_both_permissions|unseat_sim_card|user_abroad_roaming_enabled_off[PERSONA:Har"
     "d]"),
    ("[mms_issue]airplane_mode_on|bad_network_preference|bad_wifi_calling|break_apn_mms_settin"
     "g|break_app_sms_permission|data_mode_off|data_usage_exceeded|unseat_sim_card|user_abroad"
     "_roaming_disabled_on[PERSONA:None]"),
    ("[mms_issue]airplane_mode_on|bad_network_preference|bad_wifi_calling|break_apn_mms_settin"
     "g|break_app_storage_permission|data_mode_off|data_usage_exceeded|unseat_sim_card|user_ab"
     "road_roaming_disabled_on[PERSONA:Easy]"),
    ("[mms_issue]airplane_mode_on|bad_network_preference|break_app_both_permissions|data_usage"
     "_exceeded|unseat_sim_card|user_abroad_roaming_disabled_on[PERSONA:Hard]"),
    ("[mms_issue]airplane_mode_on|bad_network_preference|break_app_storage_permission|data_mod"
     "e_off|user_abroad_roaming_enabled_off[PERSONA:Easy]"),
    ("[mms_issue]airplane_mode_on|bad_wifi_calling|break_app_both_permissions|data_mode_off|da"
     "ta_usage_exceeded|unseat_sim_card|user_abroad_roaming_enabled_off[PERSONA:None]"),
    "[mms_issue]airplane_mode_on|bad_wifi_calling|user_abroad_roaming_enabled_off[PERSONA:Easy]",
    "[mms_issue]airplane_mode_on|break_app_both_permissions[PERSONA:Hard]",
    ("[mms_issue]airplane_mode_on|break_app_both_permissions|data_usage_exceeded|user_abroad_r"
     "oaming_disabled_off[PERSONA:None]"),
    ("[mms_issue]bad_network_preference|bad_wifi_calling|break_app_sms_permission|data_mode_of"
     "f|data_usage_exceeded|unseat_sim_card|user_abroad_roaming_enabled_off[PERSONA:Easy]"),
    "[mms_issue]bad_network_preference|break_app_both_permissions[PERSONA:Easy]",
    ("[mms_issue]bad_network_preference|break_app_sms_permission|user_abroad_roaming_disabled_"
     "on[PERSONA:Hard]"),
    "[mms_issue]bad_network_preference|data_mode_off|user_abroad_roaming_disabled_on[PERSONA:None]",
    ("[mms_issue]bad_wifi_calling|break_apn_mms_setting|break_app_both_permissions|data_mode_o"
     "ff|data_usage_exceeded|user_abroad_roaming_disabled_off[PERSONA:None]"),
    "[mms_issue]break_apn_mms_setting|user_abroad_roaming_enabled_off[PERSONA:Hard]",
    "[mms_issue]break_app_sms_permission|data_mode_off[PERSONA:None]",
    ("[mobile_data_issue]airplane_mode_on|bad_network_preference|bad_vpn|data_mode_off|data_sa"
     "ver_mode_on|data_usage_exceeded|user_abroad_roaming_enabled_off[PERSONA:Easy]"),
    ("[mobile_data_issue]airplane_mode_on|bad_network_preference|data_mode_off|data_saver_mode"
     "_on[PERSONA:Hard]"),
    ("[mobile_data_issue]airplane_mode_on|data_mode_off|data_saver_mode_on|data_usage_exceeded"
     "|user_abroad_roaming_enabled_off[PERSONA:Hard]"),
    ("[mobile_data_issue]airplane_mode_on|data_saver_mode_on|user_abroad_roaming_disabled_on[P"
     "ERSONA:None]"),
    ("[mobile_data_issue]bad_network_preference|bad_vpn|data_mode_off|data_saver_mode_on|data_"
     "usage_exceeded|user_abroad_roaming_enabled_off[PERSONA:Easy]"),
    ("[mobile_data_issue]bad_network_preference|bad_vpn|data_saver_mode_on|data_usage_exceeded"
     "|user_abroad_roaming_disabled_off[PERSONA:Easy]"),
    ("[mobile_data_issue]bad_network_preference|bad_vpn|user_abroad_roaming_disabled_off[PERSO"
     "NA:Hard]"),
    ("[mobile_data_issue]bad_vpn|data_mode_off|data_usage_exceeded|user_abroad_roaming_disable"
     "d_off[PERSONA:None]"),
    "[mobile_data_issue]data_saver_mode_on|user_abroad_roaming_enabled_off[PERSONA:Easy]",
    ("[service_issue]airplane_mode_on|break_apn_settings|contract_end_suspension|lock_sim_card"
     "_pin[PERSONA:None]"),
    ("[service_issue]airplane_mode_on|break_apn_settings|contract_end_suspension|lock_sim_card"
     "_pin|unseat_sim_card[PERSONA:Easy]"),
    ("[service_issue]airplane_mode_on|break_apn_settings|lock_sim_card_pin|overdue_bill_suspen"
     "sion[PERSONA:Hard]"),
    ("[service_issue]airplane_mode_on|break_apn_settings|lock_sim_card_pin|unseat_sim_card[PER"
     "SONA:None]"),
    "[service_issue]airplane_mode_on|break_apn_settings|overdue_bill_suspension[PERSONA:None]",
    ("[service_issue]airplane_mode_on|contract_end_suspension|lock_sim_card_pin|unseat_sim_car"
     "d[PERSONA:Hard]"),
    "[service_issue]airplane_mode_on|lock_sim_card_pin[PERSONA:Easy]",
    "[service_issue]airplane_mode_on|lock_sim_card_pin|overdue_bill_suspension[PERSONA:Easy]",
    "[service_issue]airplane_mode_on|overdue_bill_suspension[PERSONA:None]",
    "[service_issue]break_apn_settings|contract_end_suspension|lock_sim_card_pin[PERSONA:Hard]",
    ("[service_issue]break_apn_settings|contract_end_suspension|lock_sim_card_pin|unseat_sim_c"
     "ard[PERSONA:Hard]"),
    "[service_issue]break_apn_settings|lock_sim_card_pin[PERSONA:None]",
    "[service_issue]break_apn_settings|lock_sim_card_pin|overdue_bill_suspension[PERSONA:Easy]",
    "[service_issue]contract_end_suspension|unseat_sim_card[PERSONA:Hard]",
    "[service_issue]overdue_bill_suspension|unseat_sim_card[PERSONA:Easy]",
)
